"""What hostile clients and new users send: bad encodings, zip bombs, missing keys, wrong content types.

Every error answers one shape, {"detail": str, "code": str, "errors": [{"field", "message"}]}.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningService, running_service

LATIN1 = "Grüße aus Köln".encode("latin-1")
GROUP = {"id": "g1", "query": {"en": "where?", "de": "wo?"}, "passage": {"en": "here.", "de": "hier."}}


@pytest.fixture(scope="module")
def hardened(module_settings: Any) -> Any:
    settings = module_settings("hardening", max_unpacked_bytes=8 * 1024 * 1024, max_zip_ratio=50)
    with running_service(settings) as service:
        yield service


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}, body
    assert isinstance(body["detail"], str) and isinstance(body["code"], str) and isinstance(body["errors"], list)
    return dict(body)


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(service: RunningService, name: str, filename: str, payload: bytes) -> Any:
    return service.client.post("/datasets", data={"name": name}, files={"file": (filename, payload)})


def stored(service: RunningService) -> set[str]:
    names = {d["name"] for d in service.client.get("/datasets").json()["data"]}
    folder = service.settings.datasets_dir
    leftovers = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return names | leftovers


def squad(question: str, answer_start: Any) -> dict[str, Any]:
    context = "Der Dom steht in Köln. Er ist alt."
    qa = {"id": "q1", "question": question, "answers": [{"text": "Köln", "answer_start": answer_start}]}
    return {"data": [{"paragraphs": [{"context": context, "sentence_breaks": [[0, 22], [23, 34]], "qas": [qa]}]}]}


def first_bad_byte(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    raise AssertionError("the payload is valid UTF-8")


JSONL_QA = json.dumps(GROUP).encode() + b"\n" + LATIN1 + b"\n"
SQUAD_LATIN1 = json.dumps(squad("Wo?", 17), ensure_ascii=False).encode("latin-1")
JSONL_BITEXT = b'{"src": "a", "tgt": "b", "src_lang": "en", "tgt_lang": "de"}\n{"src": "' + LATIN1 + b'"}\n'
# (case, upload name, upload bytes, where the error must point, the file's bytes that hold the bad one)
NOT_UTF8_UPLOADS = [
    ("latin-1 jsonl", "mine.jsonl", JSONL_QA, "mine.jsonl:2", JSONL_QA),
    ("latin-1 json in a zip", "d.zip", zipped({"set/de.json": SQUAD_LATIN1}), "de.json", SQUAD_LATIN1),
    ("latin-1 bitext jsonl", "b.jsonl", JSONL_BITEXT, ".jsonl:2", JSONL_BITEXT),
]


@pytest.mark.parametrize(
    ("case", "filename", "payload", "where", "file_bytes"), NOT_UTF8_UPLOADS, ids=[c[0] for c in NOT_UTF8_UPLOADS]
)
def test_non_utf8_uploads_are_422_naming_file_and_offset(
    hardened: RunningService, case: str, filename: str, payload: bytes, where: str, file_bytes: bytes
) -> None:
    before = stored(hardened)
    body = assert_error_shape(upload(hardened, "enc", filename, payload), 422)
    assert "not UTF-8" in body["detail"] and where in body["detail"], body
    assert f"at byte {first_bad_byte(file_bytes)} of the file" in body["detail"], body
    assert stored(hardened) == before


def test_the_byte_offset_is_exact() -> None:
    import tempfile

    from xling.models.data.text import DataError, utf8_lines

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.jsonl"
        path.write_bytes(b"ok\n" + b"ab" + b"\xe9" + b"\n")
        with pytest.raises(DataError, match=r"x.jsonl:2: not UTF-8 at byte 5 "):
            list(utf8_lines(path))


@pytest.mark.parametrize("answer_start", ["seventeen", None, [17], {"at": 17}])
def test_answer_start_that_is_not_a_number_is_422(hardened: RunningService, answer_start: Any) -> None:
    payload = zipped({"set/de.json": json.dumps(squad("Wo?", answer_start)).encode()})
    body = assert_error_shape(upload(hardened, "badstart", "d.zip", payload), 422)
    assert "answer_start" in body["detail"] and "de.json" in body["detail"]


def test_a_quoted_answer_start_still_loads(hardened: RunningService) -> None:
    payload = zipped(
        {"q/de.json": json.dumps(squad("Wo?", "17")).encode(), "q/en.json": json.dumps(squad("Where?", 17)).encode()}
    )
    response = upload(hardened, "quoted", "d.zip", payload)
    assert response.status_code == 201, response.text
    assert response.json()["summary"]["groups"] == 1


def test_zip_bomb_is_refused_while_streaming(hardened: RunningService) -> None:
    before = stored(hardened)
    bomb = zipped({"bomb/en.json": b"\0" * (64 * 1024 * 1024)})  # 64 MiB of zeros, ~64 KB zipped
    assert len(bomb) < 200_000
    body = assert_error_shape(upload(hardened, "bomb", "b.zip", bomb), 413)
    assert "limit" in body["detail"] or "times its compressed size" in body["detail"]
    assert stored(hardened) == before


def test_ratio_bound_catches_a_member_under_the_total_limit(hardened: RunningService) -> None:
    bomb = zipped({"bomb/en.json": b"\0" * (4 * 1024 * 1024)})  # under the 8 MiB total, ratio ~1000
    body = assert_error_shape(upload(hardened, "bomb2", "b.zip", bomb), 413)
    assert "times its compressed size" in body["detail"]


def test_total_unpacked_bound_holds_for_incompressible_members(hardened: RunningService) -> None:
    import os

    members = {f"big/part{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(3)}  # 9 MiB > 8 MiB, ratio ~1
    body = assert_error_shape(upload(hardened, "big", "b.zip", zipped(members, zipfile.ZIP_STORED)), 413)
    assert "8388608" in body["detail"]


def test_lying_zip_headers_do_not_unpack_past_the_limit(tmp_path: Path) -> None:
    """A member whose header claims 10 bytes but which inflates to megabytes is refused, and little is written."""
    from xling.models.data.text import DataError
    from xling.state.datasets import UnpackLimits, _extract_zip

    payload = bytearray(zipped({"x/en.json": b"\0" * (3 * 1024 * 1024)}))
    # Patch the central directory's uncompressed size (offset 24 in its header) to claim 10 bytes.
    central = bytes(payload).rindex(b"PK\x01\x02")
    payload[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(DataError, match="cannot be unpacked|limit|compressed size"):
        _extract_zip(io.BytesIO(bytes(payload)), tmp_path, UnpackLimits(max_bytes=1024 * 1024, max_ratio=1000))
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert written <= 1024 * 1024


def test_non_utf8_body_says_so(hardened: RunningService) -> None:
    body = b'{"documents": [{"id": "a", "text": "' + LATIN1 + b'"}]}'
    response = hardened.client.post("/index", content=body, headers={"content-type": "application/json"})
    error = assert_error_shape(response, 400)
    assert "not UTF-8" in error["detail"], error


def test_missing_json_content_type_says_so(hardened: RunningService) -> None:
    # What `curl -d '{...}'` sends: application/x-www-form-urlencoded.
    response = hardened.client.post(
        "/index",
        content=json.dumps({"documents": [{"id": "a", "text": "t"}]}),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    error = assert_error_shape(response, 415)
    assert "Content-Type: application/json" in error["detail"]


def test_validation_errors_name_fields_and_rules_not_regexes(hardened: RunningService) -> None:
    response = hardened.client.post("/index", json={"documents": [{"id": "a b", "text": "t", "lang": "English"}]})
    error = assert_error_shape(response, 422)
    fields = {e["field"]: e["message"] for e in error["errors"]}
    assert set(fields) == {"documents[0].id", "documents[0].lang"}, fields
    assert "letters, digits" in fields["documents[0].id"]
    assert "language code" in fields["documents[0].lang"]
    assert "^" not in error["detail"] and "documents[0].id" in error["detail"]
    missing = assert_error_shape(hardened.client.post("/search", json={"k": 3}), 422)
    assert missing["errors"] == [{"field": "query", "message": "is required"}]


def test_every_error_has_the_same_shape(hardened: RunningService) -> None:
    assert_error_shape(hardened.client.get("/no/such/route"), 404)
    assert_error_shape(hardened.client.put("/search"), 405)
    assert_error_shape(hardened.client.get("/index/missing-doc"), 404)
    assert_error_shape(hardened.client.get("/jobs", params={"limit": 0}), 422)
    assert_error_shape(hardened.client.post("/index", content=b"{", headers={"content-type": "application/json"}), 422)


def test_huge_jobs_offset_is_a_422_not_a_500(hardened: RunningService) -> None:
    error = assert_error_shape(hardened.client.get("/jobs", params={"offset": 10**19}), 422)
    assert error["errors"][0]["field"] == "offset"
    assert hardened.client.get("/jobs", params={"offset": 10**9}).status_code == 200


# Keys ---------------------------------------------------------------------------------------------
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}


def _concrete(path: str) -> str:
    return path.replace("{doc_id}", "some-doc").replace("{job_id}", "some-job").replace("{version}", "some-version")


def test_keys_guard_every_route_that_returns_data(make_settings: Any) -> None:
    """Walks every route of the app, so a new route is checked without editing this test."""
    settings = make_settings(api_key="write-key", search_api_key="search-key")
    with running_service(settings) as service:
        write, search = {"Authorization": "Bearer write-key"}, {"Authorization": "Bearer search-key"}
        paths = service.client.get("/openapi.json").json()["paths"]
        checked = 0
        for template, operations in paths.items():
            for method in operations:
                if template in OPEN_PATHS or template.endswith("/events"):
                    continue
                path = _concrete(template)
                anonymous = service.client.request(method, path)
                assert anonymous.status_code == 401, (method, path, anonymous.text)
                assert anonymous.headers["www-authenticate"] == "Bearer"
                wrong = service.client.request(method, path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401, (method, path)
                assert service.client.request(method, path, headers=write).status_code != 401, (method, path)
                checked += 1
        assert checked >= 15
        # The search key reads, the write key reads and writes.
        for path in ("/index/stats", "/jobs", "/models", "/datasets", "/index/some-doc"):
            assert service.client.get(path, headers=search).status_code != 401, path
        assert service.client.post("/index/delete", json={"ids": ["x"]}, headers=search).status_code == 401
        assert service.client.post("/search", json={"query": "x"}, headers=search).status_code == 200
        events = service.client.get("/jobs/some-job/events")
        assert events.status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert service.client.get(path).status_code == 200, path
        schemes = service.client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())


def test_a_client_named_base_is_never_read_as_a_local_folder(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from xling.models.resolve import ModelNotFoundError, resolve_model
    from xling.worker.runner import JobContext

    shutil.copytree(tiny_model, tmp_path / "tmp" / "rel")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tmp/rel", None).origin == "folder"  # the operator's setting may be a folder
    with pytest.raises(ModelNotFoundError, match="hub"):
        resolve_model("tmp/rel", None, allow_folder=False)
    assert JobContext.folder_allowed("active") and not JobContext.folder_allowed("tmp/rel")


# Outages ------------------------------------------------------------------------------------------
def test_redis_outage_answers_503_and_recovers_without_restart(
    tmp_path: Path, make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from xling.state.embedded_redis import EmbeddedRedis

    store = EmbeddedRedis(tmp_path / "redis")
    store.start()
    try:
        fast_loops = {"swap_poll_s": 0.1, "sweep_interval_s": 0.1}
        with running_service(make_settings(redis_url=store.url, key_prefix="outage", **fast_loops)) as service:
            assert service.index([{"id": "a", "text": "the cat sleeps", "lang": "en"}]).status_code == 200
            store.stop()
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                calls = {
                    "search": lambda: service.client.post("/search", json={"query": "the cat"}),
                    "index": lambda: service.index([{"id": "b", "text": "a dog"}]),
                    "get": lambda: service.client.get("/index/a"),
                    "stats": lambda: service.client.get("/index/stats"),
                    "jobs": lambda: service.client.get("/jobs"),
                }
                for name, call in calls.items():
                    response = call()
                    error = assert_error_shape(response, 503)
                    assert error["code"] == "store_unavailable" and response.headers["retry-after"], name
                time.sleep(1.0)  # the background loops (applier, model watcher, job sweep) retry meanwhile
                ready = service.client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["redis"] == "unreachable"
                health = service.client.get("/healthz")
                assert health.status_code == 200 and health.json()["redis"] == "unreachable"
            assert not [r.getMessage() for r in caplog.records if r.exc_info], "tracebacks logged during the outage"
            assert sum("redis unreachable" in r.getMessage() for r in caplog.records) >= len(calls)
            store.start()
            deadline = time.monotonic() + 30
            while service.client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "did not recover after Redis came back"
                time.sleep(0.1)
            assert service.search_ids("the cat sleeps")[0] == "a"
            assert service.index([{"id": "b", "text": "a dog"}]).status_code == 200
    finally:
        store.stop()


def test_a_redis_restart_fails_no_request_once_ready(tmp_path: Path, make_settings: Any) -> None:
    """Connections pooled before the restart are found dead on their next use: that use is retried, not a 503."""
    from concurrent.futures import ThreadPoolExecutor

    from xling.state.embedded_redis import EmbeddedRedis

    store = EmbeddedRedis(tmp_path / "redis")
    store.start()
    try:
        with running_service(make_settings(redis_url=store.url, key_prefix="restart")) as service:
            assert service.index([{"id": "a", "text": "the cat sleeps", "lang": "en"}]).status_code == 200

            def burst() -> list[int]:  # concurrent requests: several pooled connections, each used after the restart
                with ThreadPoolExecutor(8) as pool:
                    calls = [lambda: service.client.post("/search", json={"query": "the cat"}),
                             lambda: service.client.get("/index/a")] * 8
                    return [response.status_code for response in pool.map(lambda call: call(), calls)]

            assert set(burst()) == {200}
            store.stop()
            store.start()
            deadline = time.monotonic() + 30
            while service.client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "did not recover after Redis came back"
                time.sleep(0.1)
            assert set(burst() + burst()) == {200}
    finally:
        store.stop()


def test_no_worker_is_visible_in_health_and_on_queued_jobs(service: RunningService) -> None:
    health = service.client.get("/healthz").json()
    assert health["workers"] == 0 and any("no worker" in w for w in health["warnings"])
    engine = service.app.state.engine
    job = engine.jobs.create("evaluate", {"model": "active", "datasets": ["x"]})
    assert "no worker" in service.client.get(f"/jobs/{job.id}").json()["warning"]
    engine.jobs.worker_beat("test-worker", timeout_s=30)
    assert service.client.get(f"/jobs/{job.id}").json()["warning"] is None
    assert service.client.get("/healthz").json()["workers"] == 1


def test_docs_pages_load_nothing_from_the_internet(hardened: RunningService) -> None:
    import re

    for page in ("/docs", "/redoc"):
        html = hardened.client.get(page)
        assert html.status_code == 200
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
        assert assets, page
        for asset in assets:
            assert not asset.startswith(("http://", "https://", "//")), (page, asset)
            assert hardened.client.get(asset).status_code == 200, (page, asset)


def test_embedded_redis_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    import redis as redis_client

    from xling.state.embedded_redis import EmbeddedRedis
    from xling.state.settings import Settings

    assert Settings(_env_file=None).embedded_redis_fsync == "always"  # type: ignore[call-arg]
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis_client.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()

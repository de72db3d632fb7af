"""Serving from Qdrant (XLING_INDEX=qdrant) through qdrant-client's embedded local mode: the api builds a
collection, keeps it current from the doc log, reopens it after a restart without re-encoding, and a rebuild
moves the serving alias to a new collection and drops the old one. (The job tests in tests/worker/test_jobs.py
run the hot swap, rollback and recalibration on Qdrant too.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from tests.conftest import TEST_KEYS, RunningService, doc_store_call, running_service
from xling.models.index.qdrant_index import alias_target
from xling.state.docstore import StoredDoc
from xling.state.settings import Settings

DOCS: list[dict[str, Any]] = [
    {"id": "a", "text": "en01w en02w en03w", "lang": "en", "metadata": {"shelf": 1}},
    {"id": "b", "text": "de04w de05w de06w", "lang": "de", "metadata": {"shelf": 2}},
    {"id": "c", "text": "fr07w fr08w fr09w", "lang": "fr", "metadata": {"shelf": 1}},
]


def collection(service: RunningService) -> str:
    stats = service.client.get("/index/stats").json()
    assert stats["index"]["kind"] == "qdrant" and stats["vectors"] == stats["documents"], stats
    return str(stats["index"]["collection"])


def qdrant_of(service: RunningService) -> QdrantClient:
    store = service.app.state.engine.qdrant
    assert store is not None
    return store.client  # type: ignore[no-any-return]


def test_restart_reopens_the_collection_and_replays_what_was_written_meanwhile(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        built = collection(service)
        assert service.search_ids(DOCS[1]["text"], k=10, langs=["de"]) == ["b"]
        assert set(service.search_ids(DOCS[0]["text"], k=3, filter={"shelf": 1})) == {"a", "c"}
        assert alias_target(qdrant_of(service), f"{TEST_KEYS.prefix}-serving") == built
        stored = qdrant_of(service).scroll(built, with_payload=True)[0]
        assert {p.payload["id"]: p.payload["text"] for p in stored if p.payload} == {d["id"]: d["text"] for d in DOCS}

    # While the api is down: one document replaced, one deleted, one new (straight into the document store).
    doc_store_call(
        settings.redis_url,
        "upsert",
        [("a", StoredDoc("de10w de11w de12w", "de", {})), ("d", StoredDoc("en13w en14w en15w", "en", {}))],
    )
    doc_store_call(settings.redis_url, "delete", ["c"])
    with running_service(settings) as service:
        assert collection(service) == built  # reopened at its recorded offset, not encoded again
        assert set(service.search_ids("fr07w fr08w fr09w", k=10)) == {"a", "b", "d"}  # "c" is gone
        assert service.search_ids("en01w en02w en03w", k=10, langs=["en"]) == ["d"]  # "a" is German now
        assert set(service.search_ids("de10w de11w de12w", k=10, langs=["de"])) == {"a", "b"}
        assert service.search_ids("en01w", k=10, filter={"shelf": 1}) == []  # "a" was replaced without metadata


def test_a_rebuild_serves_a_new_collection_and_drops_the_old_one(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", qdrant_drop_after_s=0)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        before = collection(service)
        service.app.state.engine.swap.rebuild()  # what the applier does when the log was trimmed past it
        after = collection(service)
        client = qdrant_of(service)
        assert after != before and alias_target(client, f"{settings.key_prefix}-serving") == after
        deadline = time.monotonic() + 10
        while before in {c.name for c in client.get_collections().collections}:
            assert time.monotonic() < deadline, "the replaced collection was never dropped"
            time.sleep(0.1)
        assert set(service.search_ids(DOCS[2]["text"], k=10)) == {"a", "b", "c"}
        assert service.search_ids(DOCS[2]["text"], k=10, langs=["fr"]) == ["c"]


def test_qdrant_needs_one_place_to_find_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="XLING_QDRANT_URL .* or XLING_QDRANT_PATH"):
        Settings(_env_file=None, index="qdrant")
    with pytest.raises(ValueError, match="one of them"):
        Settings(_env_file=None, index="qdrant", qdrant_url="http://q:6333", qdrant_path=tmp_path)
    local = Settings(_env_file=None, index="qdrant", qdrant_path=tmp_path)
    server = Settings(_env_file=None, index="qdrant", qdrant_url="http://q:6333")
    assert local.qdrant_local and not server.qdrant_local

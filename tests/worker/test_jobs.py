"""Fine-tuning as a service: a real Celery worker process, the job store, hot swap, rollback."""

from __future__ import annotations

import io
import itertools
import json
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import RunningService, running_service
from tests.synthetic import make_groups, vocabulary_texts, write_lareqa
from tests.tiny_model import build_tiny_model
from tests.worker.workers import FAST, Worker
from xling.state.settings import Settings

TRAIN = {"batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "val_fraction": 0.0, "warmup_ratio": 0.0}


# Every job test runs against each index kind: the worker builds (deploy, reindex) the kind the api
# serves. hnsw is configured exhaustively (efSearch >= corpus), so the same queries find the same documents.
INDEX_KINDS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"index": "hnsw", "hnsw_ef_search": 1024, "hnsw_exact_filter_max": 0},
    # qdrant-client's embedded local mode: the api process builds and serves the collections (state/qdrant_store.py),
    # with the documents only in their payload, as the distributed form keeps them (XLING_DOCUMENT_STORE=qdrant:
    # the worker reads no document, and the api calibrates means itself). Qdrant with the Redis hash is served in
    # tests/app/test_qdrant_serving.py.
    "qdrant": {"index": "qdrant", "document_store": "qdrant"},
}


@pytest.fixture(scope="module", params=list(INDEX_KINDS))
def stack(
    request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    kind = INDEX_KINDS[request.param]
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    root = tmp_path_factory.mktemp("jobs")
    if kind.get("index") == "qdrant":
        kind = {**kind, "qdrant_path": root / "qdrant"}
    model = build_tiny_model(root / "tiny-synth", extra_texts=vocabulary_texts())
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url, data_dir=root / "data", retrieval_model=str(model), log_json=False, device="cpu",
        centering_drift_threshold=10.0,  # means change only for a language without one: results stay comparable
        centering_requeue_s=2,  # Qdrant's recalibrations (a new collection each) follow as quickly as the others
        **FAST, **kind,
    )
    worker = Worker(settings, root / "worker.log", kind)
    worker.start()
    with running_service(settings) as service:
        upload_jsonl(service, "train", make_groups(120, seed=1))
        upload_jsonl(service, "english", make_groups(20, seed=2, langs=["en"]))
        evaluation = make_groups(30, seed=5)
        for group in evaluation:
            group["id"] = f"eval-{group['id']}"
        upload_lareqa(service, "evalset", write_lareqa(root / "evalset", evaluation))
        yield {"service": service, "worker": worker, "settings": settings, "root": root}
    worker.stop()


def swap_count(service: RunningService) -> float:
    found = re.search(r"^xling_model_swaps_total (\S+)$", service.client.get("/metrics").text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def upload_jsonl(service: RunningService, name: str, groups: list[dict[str, Any]]) -> httpx.Response:
    body = "".join(json.dumps(g) + "\n" for g in groups).encode()
    response = service.client.post("/datasets", data={"name": name}, files={"file": ("g.jsonl", body)})
    assert response.status_code == 201, response.text
    return response


def upload_lareqa(service: RunningService, name: str, folder: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in folder.glob("*.json"):
            archive.write(file, f"{name}/{file.name}")
    response = service.client.post("/datasets", data={"name": name}, files={"file": ("d.zip", buffer.getvalue())})
    assert response.status_code == 201, response.text


def wait_job(service: RunningService, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = service.client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job stuck in {job['status']}: {job}"
        time.sleep(0.1)


def submit(service: RunningService, kind: str, **body: Any) -> str:
    response = service.client.post(f"/jobs/{kind}", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_finetune_job_end_to_end_with_events(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    job_id = submit(
        service, "finetune", dataset="train", max_steps=30, version="e2e-v1", eval_datasets=["evalset"], **TRAIN
    )
    events: list[tuple[str, dict[str, Any]]] = []
    client = httpx.Client(base_url=service.url, timeout=180)
    with client, client.stream("GET", f"/jobs/{job_id}/events") as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and events[0][1]["status"] == "queued"
    assert ("status", {"status": "running"}) in events
    progress = [data for k, data in events if k == "progress" and data.get("stage") == "training"]
    assert progress and progress[-1]["step"] == 30 and progress[-1]["total"] == 30
    assert kinds.index("progress") < kinds.index("end")
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["model_version"] == "e2e-v1"
    assert final["metrics"]["steps"] == 30 and "eval_multi_map" in final["metrics"]
    assert final["decision"] == {"mode": "never", "deployed": False}

    models = service.client.get("/models").json()
    listed = {m["version"]: m for m in models["data"]}
    assert "e2e-v1" in listed and listed["e2e-v1"]["metrics"]["evaluation"]["lareqa"][0]["name"] == "evalset"
    jobs = service.client.get("/jobs", params={"status": "succeeded"}).json()
    assert job_id in [j["id"] for j in jobs["data"]]
    assert service.client.delete(f"/jobs/{job_id}").status_code == 409


def same_lexical_ranking(after: list[dict[str, Any]], before: list[dict[str, Any]], settings: Settings) -> None:
    """A model swap leaves BM25 as it was. The replica's own lexical index is untouched; with BM25 in Qdrant, the new
    collection holds it rebuilt: the same scores, and the same documents except among ties at the cut-off
    (which of several equal scores makes the top k is the engine's choice)."""
    assert [h["score"] for h in after] == [h["score"] for h in before]
    if not settings.lexical_in_qdrant:
        assert [h["id"] for h in after] == [h["id"] for h in before]
    else:
        cut = before[-1]["score"]
        assert {h["id"] for h in after if h["score"] > cut} == {h["id"] for h in before if h["score"] > cut}


def test_deploy_always_swaps_without_failures_or_lost_writes(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    groups = make_groups(60, seed=7)
    base_docs = [{"id": f"base-{i}", "text": g["passage"]["en"], "lang": "en"} for i, g in enumerate(groups)]
    # French documents too, so that French has a mean before the writer below adds more: the old version's means
    # then stay as they are (the stack's drift threshold is out of reach), and the rollback can be compared.
    french = [{"id": f"base-fr-{i}", "text": g["passage"]["fr"], "lang": "fr"} for i, g in enumerate(groups[:12])]
    assert service.index(base_docs + french).status_code == 200
    # Enough documents to calibrate centring on: the api takes the means from its own vectors and centres its
    # index. Let that settle first.
    calibrated = wait_for(lambda: "fr" in service.client.get("/models/active").json()["centering"].get("languages", []),
                          120)
    assert calibrated, service.client.get("/models/active").json()
    swaps_before = swap_count(service)
    probe = {"query": base_docs[3]["text"], "k": 5, "langs": ["en"]}  # French documents are written meanwhile
    before = service.client.post("/search", json=probe).json()
    old_version = before["model_version"]
    lexical_probe = {**probe, "mode": "lexical"}  # BM25 owes nothing to the model: a swap must not change it
    lexical_before = service.client.post("/search", json=lexical_probe).json()["hits"]

    stop = threading.Event()
    failures: list[str] = []
    versions_seen: set[str] = set()
    written: list[dict[str, Any]] = []

    def searcher() -> None:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for mode in itertools.cycle(("dense", "lexical", "hybrid")):
                if stop.is_set():
                    break
                response = client.post("/search", json={"query": "en01w en02w", "k": 5, "mode": mode})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions_seen.add(response.json()["model_version"])

    def writer() -> None:
        with httpx.Client(base_url=service.url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                text = f"fr{i % 60:02d}w de{(i * 7) % 60:02d}w"
                doc = {"id": f"during-{i}", "text": text, "lang": "fr", "metadata": {"seq": i}}
                response = client.post("/index", json={"documents": [doc]})
                if response.status_code == 200:
                    written.append(doc)
                else:
                    failures.append(response.text)
                i += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=searcher), threading.Thread(target=searcher), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    job_id = submit(service, "finetune", dataset="train", max_steps=15, version="swap-v1", deploy="always", **TRAIN)
    job = wait_job(service, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    deadline = time.monotonic() + 30
    while service.client.get("/models/active").json()["version"] != "swap-v1":
        assert time.monotonic() < deadline, "the api never swapped to swap-v1"
        time.sleep(0.1)
    time.sleep(0.5)  # searches and writes go on after the swap too
    stop.set()
    for thread in threads:
        thread.join()

    assert failures == [], failures[:3]
    assert versions_seen >= {old_version, "swap-v1"}
    assert job["decision"]["deployed"] is True
    # the worker encoded the corpus, except in Qdrant's local mode, where the api builds the collection
    assert job["metrics"]["reindexed"] >= len(base_docs) or stack["settings"].qdrant_local
    stats = service.client.get("/index/stats").json()
    assert stats["model_version"] == "swap-v1" and stats["vectors"] == stats["documents"]
    assert stats["index"]["kind"] == stack["settings"].index  # the worker built the kind the api serves
    assert written, "the writer wrote nothing during the swap"
    for doc in written:  # each is in the new index: the filter leaves it as the only candidate
        for mode in ("dense", "lexical"):
            body = {"query": doc["text"], "k": 1, "filter": {"seq": doc["metadata"]["seq"]}, "mode": mode}
            hits = service.client.post("/search", json=body).json()["hits"]
            assert [h["id"] for h in hits] == [doc["id"]], (doc, mode)
    lexical_after = service.client.post("/search", json=lexical_probe).json()["hits"]
    same_lexical_ranking(lexical_after, lexical_before, stack["settings"])
    assert swap_count(service) == swaps_before + 1

    # rollback: the configured default serves again, with its old results (and its old means)
    assert service.client.post(f"/models/{old_version}/activate").status_code == 200
    deadline = time.monotonic() + 30
    while service.client.get("/models/active").json()["version"] != old_version:
        assert time.monotonic() < deadline, "rollback never happened"
        time.sleep(0.1)
    after = service.client.post("/search", json=probe).json()
    assert after["model_version"] == old_version
    assert [h["id"] for h in after["hits"]] == [h["id"] for h in before["hits"]]
    assert [h["score"] for h in after["hits"]] == pytest.approx([h["score"] for h in before["hits"]], abs=1e-4)
    # and forward again, from swap-v1's snapshot: no reindex job needed
    response = service.client.post("/models/swap-v1/activate")
    assert response.status_code == 200 and response.json()["job_id"] is None
    service.client.post(f"/models/{old_version}/activate")


def test_if_better_keeps_a_worse_model_out(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    active_before = service.client.get("/models/active").json()["version"]
    # a learning rate this high collapses the embeddings: ties everywhere, ranked pessimistically
    job_id = submit(
        service, "finetune", dataset="train", max_steps=20, version="worse-v1", deploy="if_better",
        eval_datasets=["evalset"], **{**TRAIN, "learning_rate": 0.9},
    )
    job = wait_job(service, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    decision = job["decision"]
    assert decision["mode"] == "if_better" and decision["deployed"] is False
    assert decision["candidate"] < decision["active"] and decision["metric"] == "multi_map"
    time.sleep(0.5)
    assert service.client.get("/models/active").json()["version"] == active_before


def test_cancel_a_running_job(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    job_id = submit(service, "finetune", dataset="train", max_steps=100_000, version="cancel-v1", **TRAIN)
    wait_job(service, job_id, ("running",))
    wait_for_progress(service, job_id)
    cancelled_at = time.monotonic()
    assert service.client.delete(f"/jobs/{job_id}").json()["cancel_requested"] is True
    job = wait_job(service, job_id, ("cancelled",), timeout=30)
    assert time.monotonic() - cancelled_at < 10
    assert "cancelled at step" in job["error"]
    assert service.client.delete(f"/jobs/{job_id}").status_code == 409


def test_a_stopped_worker_ends_its_job_at_once_and_a_retry_resumes_it(stack: dict[str, Any]) -> None:
    """SIGTERM (xling serve stopping, docker stop): Celery's warm shutdown would wait for the whole job; instead
    the job ends at its next step, is failed with the reason, and the worker exits."""
    service: RunningService = stack["service"]
    worker: Worker = stack["worker"]
    job_id = submit(service, "finetune", dataset="train", max_steps=100_000, version="stopped-v1", **TRAIN)
    wait_job(service, job_id, ("running",))
    wait_for_progress(service, job_id)
    assert worker.process is not None
    stopped_at = time.monotonic()
    worker.process.terminate()
    worker.process.wait(timeout=30)
    assert time.monotonic() - stopped_at < 15
    job = service.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"].startswith("the worker was stopped"), job
    worker.start()
    retry = service.client.post(f"/jobs/{job_id}/retry")
    assert retry.status_code == 202
    service.client.delete(f"/jobs/{retry.json()['job_id']}")  # not run to 100,000 steps: the next tests want the worker
    wait_job(service, retry.json()["job_id"], ("cancelled",), timeout=60)


def wait_for_progress(service: RunningService, job_id: str, step: int = 1) -> None:
    deadline = time.monotonic() + 120
    while service.client.get(f"/jobs/{job_id}").json()["progress"].get("step", 0) < step:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_killed_worker_is_detected_and_retry_resumes(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    worker: Worker = stack["worker"]
    job_id = submit(
        service, "finetune", dataset="train", max_steps=60, checkpoint_steps=5, version="killed-v1", **TRAIN
    )
    wait_job(service, job_id, ("running",))
    wait_for_progress(service, job_id, step=12)
    worker.kill()
    killed_at = time.monotonic()
    job = wait_job(service, job_id, ("failed",), timeout=30)
    assert job["error"].startswith("worker lost")
    assert time.monotonic() - killed_at < FAST["heartbeat_timeout_s"] + 5
    # The kill may land mid-save: only checkpoints whose trainer_state.json exists are complete.
    folder = stack["settings"].models_dir / "killed-v1" / "checkpoints"
    complete = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    assert complete, "no complete checkpoint was written before the kill"
    last_checkpoint = max(complete)

    worker.start()
    retry = service.client.post(f"/jobs/{job_id}/retry")
    assert retry.status_code == 202
    retry_id = retry.json()["job_id"]
    first_steps: list[int] = []
    deadline = time.monotonic() + 180
    while (job := service.client.get(f"/jobs/{retry_id}").json())["status"] not in ("succeeded", "failed"):
        if job["progress"].get("step") and not first_steps:
            first_steps.append(job["progress"]["step"])
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    assert job["retry_of"] == job_id and job["metrics"]["steps"] == 60
    assert first_steps == [last_checkpoint + 1], (first_steps, last_checkpoint)  # resumed, not restarted


def test_bad_job_parameters_get_422(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    cases = [
        ("finetune", {"dataset": "nope"}, "no dataset 'nope'"),
        ("finetune", {"dataset": "english", "strategy": "crosslingual"}, "at least two languages"),
        ("finetune", {"dataset": "train", "alpha": 2}, "less than or equal to 1"),
        ("finetune", {"dataset": "train", "batch_size": 1}, "greater than or equal to 2"),
        ("finetune", {"dataset": "train", "learning_rate": 0}, "greater than 0"),
        ("finetune", {"dataset": "train", "base": "not-a-version"}, "not 'active', a registry version"),
        ("finetune", {"dataset": "train", "base": "../etc"}, "not 'active', a registry version"),
        ("finetune", {"dataset": "train", "deploy": "if_better"}, "needs eval_datasets"),
        ("finetune", {"dataset": "train", "version": "e2e-v1"}, "already exists"),
        ("evaluate", {"datasets": ["missing"]}, "no dataset"),
        ("experiment", {"train_dataset": "evalset", "eval_datasets": ["evalset"]}, "cannot also be"),
        ("reindex", {"version": "unknown"}, "not a registry version"),
    ]
    jobs_before = service.client.get("/jobs").json()["count"]
    for kind, body, reason in cases:
        response = service.client.post(f"/jobs/{kind}", json=body)
        assert response.status_code == 422, (kind, body, response.text)
        assert reason in response.text, (kind, body, response.text)
    assert service.client.get("/jobs").json()["count"] == jobs_before
    assert service.client.post("/models/nope/activate").status_code == 404
    assert service.client.get("/jobs/unknown").status_code == 404


def test_dataset_uploads(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    listed = {d["name"]: d for d in service.client.get("/datasets").json()["data"]}
    assert listed["evalset"]["format"] == "lareqa" and listed["train"]["summary"]["groups"] == 120
    duplicate = service.client.post("/datasets", data={"name": "train"}, files={"file": ("g.jsonl", b"{}")})
    assert duplicate.status_code == 409
    broken = service.client.post("/datasets", data={"name": "broken"}, files={"file": ("g.jsonl", b"not json\n")})
    assert broken.status_code == 422 and "g.jsonl:1: not JSON" in broken.json()["detail"]  # the name it was sent as
    assert str(stack["settings"].data_dir) not in broken.json()["detail"]
    wrong = service.client.post("/datasets", data={"name": "x"}, files={"file": ("g.csv", b"a,b")})
    assert wrong.status_code == 422
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.json", "{}")
    response = service.client.post("/datasets", data={"name": "evil"}, files={"file": ("e.zip", evil.getvalue())})
    assert response.status_code == 422 and "unsafe path" in response.text
    assert not (stack["settings"].data_dir / "escape.json").exists()
    assert "broken" not in {d["name"] for d in service.client.get("/datasets").json()["data"]}


def bitext_rows(groups: list[dict[str, Any]], src: str, tgt: str) -> list[dict[str, str]]:
    return [{"src": g["query"][src], "tgt": g["query"][tgt], "src_lang": src, "tgt_lang": tgt} for g in groups]


def test_bitext_datasets_evaluate_train_and_decide(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    rows = "".join(json.dumps(r) + "\n" for r in bitext_rows(make_groups(60, seed=7), "de", "fr")).encode()
    response = service.client.post("/datasets", data={"name": "bt-train"}, files={"file": ("p.jsonl", rows)})
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["kind"], info["format"], info["summary"]["lines"]) == ("bitext", "bitext-jsonl", 60)
    held = make_groups(25, seed=8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("held/t.de-fr.de", "\n".join(g["query"]["de"] for g in held) + "\n")
        archive.writestr("held/t.de-fr.fr", "\n".join(g["query"]["fr"] for g in held) + "\n")
    response = service.client.post("/datasets", data={"name": "bt-held"}, files={"file": ("h.zip", buffer.getvalue())})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "bitext-tatoeba"

    job = wait_job(service, submit(service, "evaluate", datasets=["evalset", "bt-held"]), ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert 0 <= job["metrics"]["bt-held:bitext_acc@1"] <= 1 and "evalset:multi_map" in job["metrics"]

    job_id = submit(
        service, "finetune", dataset=["train", "bt-train"], strategy="hybrid", max_steps=25, version="bt-v1",
        eval_datasets=["evalset", "bt-held"], deploy="if_better", compare_on="bt-held", **TRAIN,
    )
    job = wait_job(service, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    decision = job["decision"]
    assert decision["metric"] == "bitext_acc@1" and decision["compare_on"] == "bt-held"
    # Compared as served: centred per language (the service centres by default).
    assert decision["centred"] is True
    assert decision["candidate"] == job["metrics"]["eval:bt-held:centred:bitext_acc@1"]
    # The default guards: Mono mAP of the LAReQA set, accuracy of the bitext set, each with both values.
    guards = {g["metric"]: g for g in decision["guards"]}
    assert set(guards) == {"evalset:mono_map", "bt-held:bitext_acc@1"}
    assert guards["evalset:mono_map"]["candidate"] == job["metrics"]["eval:evalset:centred:mono_map"]
    assert all(g["max_drop"] == 0.005 and g["passed"] == (g["baseline"] - g["candidate"] <= 0.005 + 1e-12)
               for g in guards.values())
    kept = all(g["passed"] for g in guards.values())
    assert decision["deployed"] == (decision["candidate"] > decision["active"] and kept), decision
    assert ("guard fell" in decision["reason"]) == (decision["candidate"] > decision["active"] and not kept)
    manifest = service.client.get("/models").json()
    trained = next(m for m in manifest["data"] if m["version"] == "bt-v1")
    assert set(trained["training"]["dataset"]["languages"]) == {"de", "en", "es", "fr"}

    cases = [
        ({"dataset": "bt-train", "strategy": "monolingual"}, "cannot use bitext pairs"),
        ({"dataset": "bt-train", "strategy": "hybrid"}, "bitext pairs are cross-lingual only"),
        ({"dataset": "train", "eval_datasets": ["bt-held"], "deploy": "if_better"}, "compare_on"),
        ({"dataset": "train", "eval_datasets": ["evalset"], "compare_on": "bt-held"}, "must be one of eval_datasets"),
        ({"dataset": "train", "eval_datasets": ["evalset"], "deploy": "if_better",
          "guards": [{"metric": "bt-held:mono_map"}]}, "is not one of eval_datasets"),
        ({"dataset": "train", "eval_datasets": ["bt-held"], "deploy": "if_better", "compare_on": "bt-held",
          "guards": [{"metric": "bt-held:mono_map"}]}, "a bitext set reports bitext_acc@1"),
        ({"dataset": "train", "eval_datasets": ["evalset"], "guards": [{"metric": "evalset:mono_map"}]},
         "guards decide deploy 'if_better'"),
        ({"dataset": ["train", "bt-train"], "mixing": {"nope": 1.0}}, "not training datasets of this job"),
        ({"dataset": ["train", "bt-train"], "mixing": {"train": 0.0}}, "a share of 0"),
        ({"dataset": "train", "bitext_passes": 4}, "this job has none"),
        ({"dataset": ["train", "bt-train"], "bitext_passes": 4, "max_steps": 10}, "not both"),
        ({"dataset": "train", "strategy": "crosslingual", "anchor_distillation": 1.0}, "this run has none"),
        ({"dataset": "train", "anchor_distillation": -1.0}, "anchor_distillation"),
    ]
    for body, reason in cases:
        response = service.client.post("/jobs/finetune", json=body)
        assert response.status_code == 422 and reason in response.text, (body, response.text)


def test_reports_are_served_and_artefacts_deleted(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    # a LAReQA folder and JSONL QA groups, each also scored centred per language
    job_id = submit(service, "evaluate", datasets=["evalset", "english"], centering=True)
    job = wait_job(service, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    assert 0 < job["metrics"]["english:mono_map"] <= 1
    assert 0 < job["metrics"]["evalset:centred:multi_map"] <= 1 and job["params"]["centering"] is True
    report = service.client.get(f"/jobs/{job_id}/report")
    assert report.status_code == 200, report.text
    body = report.json()
    assert "report/report.json" in body["files"] and "report/report.md" in body["files"]
    scored = body["reports"]["report/report.json"]["lareqa"][0]["metrics"]["multi_map"]
    assert scored == job["metrics"]["evalset:multi_map"]
    markdown = service.client.get(f"/jobs/{job_id}/report", params={"format": "markdown"})
    assert markdown.headers["content-type"].startswith("text/markdown") and "Multi" in markdown.text
    for path in body["files"]:
        assert service.client.get(f"/jobs/{job_id}/report/files/{path}").status_code == 200, path
    assert service.client.get(f"/jobs/{job_id}/report/files/../../datasets/train/dataset.json").status_code == 404
    assert service.client.delete(f"/jobs/{job_id}/artefacts").status_code == 204
    assert service.client.get(f"/jobs/{job_id}/report").status_code == 404
    assert not (stack["settings"].reports_dir / job_id).exists()


def test_datasets_can_be_replaced_and_deleted_unless_in_use(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    upload_jsonl(service, "scratch", make_groups(10, seed=11))
    again = "".join(json.dumps(g) + "\n" for g in make_groups(12, seed=12)).encode()
    refused = service.client.post("/datasets", data={"name": "scratch"}, files={"file": ("g.jsonl", again)})
    assert refused.status_code == 409 and "replace=true" in refused.json()["detail"]
    replaced = service.client.post(
        "/datasets", data={"name": "scratch", "replace": "true"}, files={"file": ("g.jsonl", again)}
    )
    assert replaced.status_code == 201 and replaced.json()["summary"]["groups"] == 12
    broken = service.client.post(
        "/datasets", data={"name": "scratch", "replace": "true"}, files={"file": ("g.jsonl", b"not json\n")}
    )
    assert broken.status_code == 422
    listed = {d["name"]: d for d in service.client.get("/datasets").json()["data"]}
    assert listed["scratch"]["summary"]["groups"] == 12  # a refused replacement leaves the old one

    engine = service.app.state.engine
    user = engine.jobs.create("evaluate", {"model": "active", "datasets": ["scratch"]})  # queued, never sent
    assert service.client.delete("/datasets/scratch").status_code == 409
    engine.jobs.transition(user.id, "cancelled", error="test")
    assert service.client.delete("/datasets/scratch").status_code == 204
    assert service.client.delete("/datasets/scratch").status_code == 404
    assert "scratch" not in {d["name"] for d in service.client.get("/datasets").json()["data"]}


def test_models_list_the_default_and_protect_what_serves(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    models = service.client.get("/models").json()
    default = [m for m in models["data"] if m["default"]]
    assert len(default) == 1 and models["active"] in {m["version"] for m in models["data"]}
    job = wait_job(
        service, submit(service, "finetune", dataset="train", max_steps=2, version="doomed-v1", **TRAIN),
        ("succeeded", "failed"),
    )
    assert job["status"] == "succeeded", job
    assert (stack["settings"].models_dir / "doomed-v1").is_dir()
    active = models["active"]
    assert service.client.delete(f"/models/{active}").status_code == (409 if active != default[0]["version"] else 404)
    registry = service.app.state.engine.registry
    previous = registry.rollback_target()
    registry.client.set(registry.keys.previous_model, "doomed-v1")  # as if doomed-v1 served before the last swap
    assert service.client.get("/models").json()["rollback_target"] == "doomed-v1"
    refused = service.client.delete("/models/doomed-v1")
    assert refused.status_code == 409 and "rollback target" in refused.json()["detail"]
    registry.client.set(registry.keys.previous_model, previous or "")
    user = service.app.state.engine.jobs.create("evaluate", {"model": "doomed-v1", "datasets": ["evalset"]})
    assert service.client.delete("/models/doomed-v1").status_code == 409
    service.app.state.engine.jobs.transition(user.id, "cancelled", error="test")
    assert service.client.delete("/models/doomed-v1").status_code == 204
    assert not (stack["settings"].models_dir / "doomed-v1").exists()
    assert service.client.delete("/models/doomed-v1").status_code == 404


def _bitext_upload(service: RunningService, name: str, groups: list[dict[str, Any]]) -> None:
    """Spanish-word sentences as a language of their own, `xqz` (no built-in detector knows it), against English."""
    rows = [{"src": g["query"]["es"], "tgt": g["query"]["en"], "src_lang": "xqz", "tgt_lang": "en"} for g in groups]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = service.client.post("/datasets", data={"name": name}, files={"file": ("b.jsonl", body)})
    assert response.status_code == 201, response.text


def _embed(service: RunningService, text: str, **extra: Any) -> dict[str, Any]:
    for _ in range(3):  # a swap between asking what serves and embedding answers 404 once
        model = service.client.get("/v1/models").json()["data"][0]["id"]
        response = service.client.post("/v1/embeddings", json={"input": [text], "model": model, **extra})
        if response.status_code != 404:
            break
    assert response.status_code == 200, response.text
    return dict(response.json()["data"][0])


def test_an_adapter_job_adds_a_language_and_moves_no_other(stack: dict[str, Any]) -> None:
    service: RunningService = stack["service"]
    _bitext_upload(service, "xqz-train", make_groups(80, seed=11))
    _bitext_upload(service, "xqz-held", make_groups(30, seed=12))
    rare = [{"id": f"xqz-{i}", "text": g["passage"]["es"], "lang": "xqz"}
            for i, g in enumerate(make_groups(8, seed=13))]
    others = [{"id": f"other-{lang}-{i}", "text": g["passage"][lang], "lang": lang}
              for lang in ("en", "de") for i, g in enumerate(make_groups(20, seed=15))]
    assert service.index(rare + others).status_code == 200

    served: list[str] = []

    def settled() -> bool:  # calibrated, no recalibration asked for or under way, the same means three polls running
        centering = service.client.get("/models/active").json()["centering"]
        busy = sum(service.client.get("/jobs", params={"status": s}).json()["count"] for s in ("queued", "running"))
        served.append(f"{centering.get('id')}:{busy}:{centering.get('recalibrate')}")
        return "id" in centering and busy == 0 and not centering["recalibrate"] and served[-3:] == served[-1:] * 3

    assert wait_for(settled, 120), (served[-3:], service.client.get("/models/active").json()["centering"])
    previous = service.client.get("/models/active").json()["version"]
    # Among the other languages' documents (the adapter's own documents move: that is its point).
    probes = [{"query": g["query"][lang], "k": 5, "query_lang": lang, "langs": ["en", "de", "fr"]}
              for lang in ("en", "de") for g in make_groups(3, seed=14)]
    before = [service.client.post("/search", json=p).json()["hits"] for p in probes]
    german_before = _embed(service, "de01w de02w de03w", lang="de")

    config = {"rank": 8, "lora_alpha": 16, "learning_rate": 1e-2, "batch_size": 16, "max_steps": 30, "eval_steps": 10,
              "max_seconds": None, "max_length": 32, "early_stopping_patience": None}
    job_id = submit(service, "finetune", dataset="xqz-train", adapters=["xqz"], adapter_config=config,
                    eval_datasets=["xqz-held", "evalset"], deploy="always", version="xqz-v1")
    job = wait_job(service, job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    assert metrics["adapter:xqz:steps"] == 30 and 0 <= metrics["eval:xqz-held:centred:bitext_acc@1"] <= 1
    # A LAReQA set without the adapter's language scores exactly as the base does (every metric, raw and centred).
    assert metrics["eval:evalset:max_change_from_base"] <= 1e-6 and "eval:evalset:centred:mono_map" in metrics
    if stack["settings"].index != "qdrant":  # the local tiers start from the parent's index
        assert metrics["reindex"] == "adapters only" and metrics["reindexed"] == len(rare), metrics
        assert metrics["reused"] >= len(others)  # and the earlier tests' documents
        assert metrics["reused_check"]["max_abs_diff"] <= 1e-5
    assert wait_for(lambda: service.client.get("/models/active").json()["version"] == "xqz-v1", 30)
    assert wait_for(lambda: service.client.post("/search", json=probes[0]).json()["model_version"] == "xqz-v1", 30)

    described = service.client.get("/models/xqz-v1").json()
    record = described["adapters"]["xqz"]
    assert record["pairs"] == ["xqz-train.xqz-en"] and record["steps"] == 30
    assert set(record["heldout"]["xqz-held"]["xqz-held.xqz-en"]) == {"raw", "centred"}
    # Every other language is served exactly as before: the same hits with the same scores. hnsw is approximate
    # past its efSearch, and re-inserting the adapter's documents changes its graph: there the scores must agree.
    # On Qdrant the api encodes the whole collection again, with the parent's means for every other language; in
    # a new collection, documents with the same text (earlier tests index some twice) may tie in another order:
    # there the ranking's scores must be the same, rank by rank.
    kind = stack["settings"].index
    for probe, hits in zip(probes, before, strict=True):
        after = {h["id"]: h["score"] for h in service.client.post("/search", json=probe).json()["hits"]}
        common = [h for h in hits if h["id"] in after]
        assert all(abs(after[h["id"]] - h["score"]) <= 1e-5 for h in common), probe
        if kind == "flat":
            assert list(after) == [h["id"] for h in hits], probe
        elif kind == "qdrant":
            assert np.allclose(list(after.values()), [h["score"] for h in hits], atol=1e-5), probe
        else:
            assert len(common) >= 3, probe
    german = _embed(service, "de01w de02w de03w", lang="de")
    assert german["adapter"] is None
    assert np.allclose(german["embedding"], german_before["embedding"], atol=1e-6)
    assert _embed(service, "es01w es02w es03w", lang="xqz")["adapter"] == "xqz"
    assert _embed(service, "es04w es05w es06w es07w es08w")["adapter"] == "xqz"  # detected: learnt from the bitext
    rare_hit = service.client.post("/search", json={"query": rare[0]["text"], "k": 1, "langs": ["xqz"]}).json()
    assert rare_hit["hits"][0]["id"] == rare[0]["id"]  # its own vector, encoded by the adapter at the swap

    assert service.client.post(f"/models/{previous}/activate").status_code == 200
    assert wait_for(lambda: _embed(service, "es01w es02w", lang="xqz")["adapter"] is None, 30)  # rolled back

    cases = [
        ({"dataset": "train", "adapters": ["xqz"]}, "adapters train on bitext"),
        ({"dataset": "xqz-train", "adapters": ["kzj"]}, "no training dataset has that language"),
        ({"dataset": "xqz-train", "adapters": ["xqz", "xqz"]}, "listed twice"),
        ({"dataset": "xqz-train", "adapters": ["xqz"], "adapter_config": {"rank": 0}}, "rank must be"),
        ({"dataset": "xqz-train", "adapters": ["xqz"], "adapter_config": {"nope": 1}}, "nope"),
        ({"dataset": "train", "adapter_config": {"rank": 4}}, "adapter_config is for a job with adapters"),
        ({"dataset": "xqz-train", "adapters": ["xqz"], "eval_datasets": ["evalset"], "deploy": "if_better"},
         "compares on a bitext eval dataset"),
    ]
    for body, reason in cases:
        response = service.client.post("/jobs/finetune", json=body)
        assert response.status_code == 422 and reason in response.text, (body, response.text)

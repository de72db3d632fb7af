"""A reindex spread over two real Celery workers: both encode ranges, and `kill -9` of the helper mid-way still
yields every document exactly once (its range's lease lapses and the job's worker encodes it). A job's worker
stopped (SIGSTOP) until the sweep fails its job publishes nothing when it resumes, and runs the next job."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RunningService, running_service
from tests.synthetic import vocabulary_texts
from tests.tiny_model import build_tiny_model, random_sentences
from tests.worker.workers import FAST, Worker
from xling.state.jobstore import JobStore
from xling.state.keys import RedisKeys
from xling.state.reindex_ranges import RangeBoard
from xling.state.settings import Settings

DOCS_PER_LANG = 1_500
RANGES = 24
# Small encoder batches make the tiny model slow enough for a kill to land mid-way.
SLOW = {"reindex_ranges": RANGES, "reindex_lease_s": 5.0, "encode_batch_size": 4}


@pytest.fixture
def setup(redis_server: Any, tmp_path: Path) -> Iterator[tuple[RunningService, list[Worker], Settings]]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    model = build_tiny_model(tmp_path / "tiny", extra_texts=vocabulary_texts())
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url, data_dir=tmp_path / "data", retrieval_model=str(model), log_json=False,
        device="cpu", **FAST, **SLOW,
    )
    workers = [Worker(settings, tmp_path / f"worker{n}.log", SLOW) for n in range(2)]
    with running_service(settings) as service:
        for lang in ("en", "de", "fr"):
            texts = random_sentences(lang, DOCS_PER_LANG, seed=len(lang) + ord(lang[0]))
            for start in range(0, DOCS_PER_LANG, 500):
                docs = [{"id": f"{lang}-{i}", "text": texts[i], "lang": lang}
                        for i in range(start, start + 500)]
                assert service.client.post("/index", json={"documents": docs}).status_code == 200
        for worker in workers:
            worker.start()
        yield service, workers, settings
    for worker in workers:
        worker.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def settle(service: RunningService) -> None:
    """Both workers up, and the recalibration the api queues by itself for the new corpus over, so that the
    test's own job is the only one running."""
    wait_until(lambda: service.client.get("/healthz").json().get("workers", 0) >= 2, 60, "the workers did not come up")
    wait_until(lambda: not any(job["status"] in ("queued", "running")
                               for job in service.client.get("/jobs").json()["data"]),
               300, "the api's own recalibration did not finish")
    wait_until(lambda: service.client.get("/healthz").json()["centering"].startswith("calibrated"), 60,
               "the api did not swap to its own recalibration")


def test_killing_a_helper_mid_reindex_loses_and_doubles_nothing(
    setup: tuple[RunningService, list[Worker], Settings],
) -> None:
    service, workers, settings = setup
    total = 3 * DOCS_PER_LANG
    settle(service)
    version = service.client.get("/healthz").json()["model_version"]
    response = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    board = RangeBoard(redis.Redis.from_url(str(settings.redis_url), decode_responses=True),
                       RedisKeys(settings.key_prefix), job_id, RANGES, settings.reindex_lease_s)
    # Wait until the worker that does not run the job holds a range, then kill it.
    victim = None
    deadline = time.monotonic() + 120
    while victim is None:
        assert time.monotonic() < deadline, "the helper never took a range"
        coordinator = service.client.get(f"/jobs/{job_id}").json()["progress"].get("worker")
        helpers = {name for name in board.holders().values() if coordinator and name != coordinator}
        victim = next((w for w in workers for name in helpers if w.process and name.endswith(f":{w.process.pid}")),
                      None)
        time.sleep(0.02)
    victim.kill()
    killed_at = time.monotonic()
    # The ranges it held when it died (it may have finished one in the moment between the look and the kill):
    # their leases outlive it, unrenewed.
    assert victim.process is not None
    orphaned = [n for n, name in board.holders().items() if name.endswith(f":{victim.process.pid}")]
    # a lease lapses `reindex_lease_s` after its last renewal (by its worker's lease thread), which came before the
    # kill
    lapse_at = killed_at + min((int(board.client.pttl(board._lease(n))) for n in orphaned), default=0) / 1000
    while (job := service.client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < killed_at + 300, job
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["reindexed"] == total  # every document, once
    # The job finished only after the killed worker's leases lapsed and its ranges were encoded again.
    if orphaned:
        assert time.monotonic() >= lapse_at
    deadline = time.monotonic() + 60
    while service.client.get("/healthz").json().get("centering", "").split(":")[-1] != job["metrics"]["centering"]:
        assert time.monotonic() < deadline, "the api did not swap to the recalibrated index"
        time.sleep(0.2)
    stats = service.client.get("/index/stats").json()
    assert stats["vectors"] == stats["documents"] == total
    assert stats["languages"] == {"en": DOCS_PER_LANG, "de": DOCS_PER_LANG, "fr": DOCS_PER_LANG}
    assert not (settings.indexes_dir / ".ranges" / job_id).exists()  # the parts are cleaned up


def test_a_job_failed_while_its_worker_was_stopped_publishes_nothing_when_it_resumes(
    setup: tuple[RunningService, list[Worker], Settings],
) -> None:
    service, workers, settings = setup
    settle(service)
    before = service.client.get("/healthz").json()
    version, centering = before["model_version"], before["centering"]
    response = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    def progress() -> dict[str, Any]:
        found: dict[str, Any] = service.client.get(f"/jobs/{job_id}").json()["progress"]
        return found

    wait_until(lambda: progress().get("stage") == "reindexing" and progress().get("done", 0) > 0, 120,
               "the reindex never got going")
    coordinator = next(w for w in workers if w.process and progress()["worker"].endswith(f":{w.process.pid}"))
    assert coordinator.process is not None
    os.kill(coordinator.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: service.client.get(f"/jobs/{job_id}").json()["status"] == "failed",
                   30, "the sweep did not fail the stopped worker's job")
    finally:
        os.kill(coordinator.process.pid, signal.SIGCONT)
    failed_at = service.client.get(f"/jobs/{job_id}").json()
    # Resumed, the worker learns that its job is over at its next beat or check, and stops it.
    wait_until(lambda: "job stopped: job no longer running" in coordinator.log.read_text(), 60,
               "the resumed worker did not stop its failed job")
    time.sleep(10 * settings.swap_poll_s)  # time for a swap, were anything published
    job = service.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and "worker lost" in job["error"], job
    assert job["progress"] == failed_at["progress"] and job["progress"]["stage"] == "failed"
    store = JobStore(redis.Redis.from_url(str(settings.redis_url), decode_responses=True),
                     RedisKeys(settings.key_prefix))
    events = [fields for _, fields in store.events(job_id)]
    assert events[-1] == {"type": "status", "status": "failed"}, events[-3:]  # no stage written after it
    assert service.client.get("/healthz").json()["centering"] == centering  # no means published, no swap
    # The workers take the next job (started, then cancelled: its run to the end is the test above).
    response = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
    next_id = response.json()["job_id"]
    wait_until(lambda: service.client.get(f"/jobs/{next_id}").json()["status"] == "running", 60,
               "no worker took the next job")
    assert service.client.delete(f"/jobs/{next_id}").status_code in (200, 202)
    wait_until(lambda: service.client.get(f"/jobs/{next_id}").json()["status"] == "cancelled", 120,
               "the next job did not stop when cancelled")

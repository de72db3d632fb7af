"""A finetune job on several devices: a real worker with XLING_TRAIN_PROCESSES=2 trains through torchrun on two
CPU ranks (gloo), forwards rank 0's progress to the job, writes one model version, and a cancel stops every rank.
(That two ranks train as one process on the same global batch: tests/models/test_distributed_training.py.)"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RunningService, running_service
from tests.synthetic import make_groups
from tests.tiny_model import build_tiny_model
from tests.worker.test_jobs import TRAIN, submit, upload_jsonl, wait_for_progress, wait_job
from tests.worker.workers import FAST, Worker
from xling.state.settings import Settings

RANKS = {"train_processes": 2}


@pytest.fixture(scope="module")
def ranked(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    root = tmp_path_factory.mktemp("ranked")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_server.url, data_dir=root / "data", retrieval_model=str(build_tiny_model(root / "tiny")),
        log_json=False, device="cpu", **FAST, **RANKS,
    )
    worker = Worker(settings, root / "worker.log", RANKS)
    worker.start()
    with running_service(settings) as service:
        upload_jsonl(service, "train", make_groups(120, seed=1))
        yield {"service": service, "settings": settings}
    worker.stop()


def rank_processes(folder: Path) -> list[int]:
    """Processes still running that were started for this job's ranks (their command line names its request)."""
    request = str(folder / "request.json")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if request in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if pid != os.getpid()]


def test_a_finetune_job_trains_on_two_ranks_and_writes_one_version(ranked: dict[str, Any]) -> None:
    service: RunningService = ranked["service"]
    job_id = submit(service, "finetune", dataset="train", max_steps=12, version="ranked-v1", **TRAIN)
    job = wait_job(service, job_id, ("succeeded", "failed"), timeout=300)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["train_processes"] == 2 and job["metrics"]["steps"] == 12
    assert job["progress"]["step"] == 12 and job["progress"]["total"] == 12  # rank 0's progress, forwarded
    folder = ranked["settings"].jobs_dir / job_id
    manifest = json.loads((ranked["settings"].models_dir / "ranked-v1" / "xling.json").read_text())
    assert manifest["version"] == "ranked-v1" and manifest["training"]["processes"] == 2
    assert len(manifest["training"]["loss_curve"]) >= 2
    assert "ranked-v1" in {m["version"] for m in service.client.get("/models").json()["data"]}
    assert rank_processes(folder) == []


def test_cancelling_stops_every_rank(ranked: dict[str, Any]) -> None:
    service: RunningService = ranked["service"]
    job_id = submit(service, "finetune", dataset="train", max_steps=100_000, version="ranked-cancel", **TRAIN)
    wait_job(service, job_id, ("running",))
    wait_for_progress(service, job_id, step=2)
    assert rank_processes(ranked["settings"].jobs_dir / job_id)  # torchrun and its two ranks
    cancelled_at = time.monotonic()
    assert service.client.delete(f"/jobs/{job_id}").json()["cancel_requested"] is True
    job = wait_job(service, job_id, ("cancelled",), timeout=60)
    assert "cancelled at step" in job["error"] and time.monotonic() - cancelled_at < 30
    assert rank_processes(ranked["settings"].jobs_dir / job_id) == []  # both ranks stopped at the same step

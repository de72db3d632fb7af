"""Redis going away and coming back, and no worker at all: the service says so and recovers by itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.app.helpers import assert_error_shape
from tests.conftest import RunningService, running_service


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

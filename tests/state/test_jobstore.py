"""The job store alone, on a real Redis: the status machine, cancellation, the lost-job sweep, worker presence."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from xling.state.jobstore import JobNotFound, JobStore
from xling.state.keys import RedisKeys


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield JobStore(client, RedisKeys("jobs-test"))
    client.close()


def test_a_job_keeps_its_parameters_and_lists_newest_first(store: JobStore) -> None:
    first = store.create("evaluate", {"model": "active", "datasets": ["a"]})
    time.sleep(0.01)
    second = store.create("reindex", {"version": "v2"}, retry_of=first.id)
    assert store.get(first.id).params == {"model": "active", "datasets": ["a"]}
    assert (first.status, second.retry_of) == ("queued", first.id)
    page, total = store.page(0, 10)
    assert [job.id for job in page] == [second.id, first.id] and total == 2
    store.transition(first.id, "running")
    running, count = store.page(0, 10, status="running")
    assert [job.id for job in running] == [first.id] and count == 1
    with pytest.raises(JobNotFound):
        store.get("no-such-job")


def test_status_moves_only_along_allowed_edges_and_final_states_stay(store: JobStore) -> None:
    job = store.create("evaluate", {})
    assert not store.transition(job.id, "succeeded")  # queued -> succeeded skips running
    assert store.transition(job.id, "running")
    assert not store.transition(job.id, "running")
    assert store.transition(job.id, "succeeded", metrics={"map": 0.5}, model_version="v1")
    done = store.get(job.id)
    assert (done.status, done.metrics, done.model_version) == ("succeeded", {"map": 0.5}, "v1")
    assert done.started_at is not None and done.finished_at is not None and done.final
    assert not store.transition(job.id, "failed")  # a late sweep cannot overwrite the outcome
    statuses = [fields.get("status") for _, fields in store.events(job.id) if fields.get("type") == "status"]
    assert statuses == ["queued", "running", "succeeded"]


def test_cancel_is_immediate_when_queued_and_cooperative_when_running(store: JobStore) -> None:
    queued = store.create("evaluate", {})
    assert store.request_cancel(queued.id).status == "cancelled"
    running = store.create("evaluate", {})
    store.transition(running.id, "running")
    after = store.request_cancel(running.id)
    assert after.status == "running" and after.cancel_requested and store.cancel_requested(running.id)
    assert [job.id for job in store.unfinished()] == [running.id]


def test_the_sweep_fails_running_jobs_whose_heartbeat_lapsed_and_only_those(store: JobStore) -> None:
    lost, alive = store.create("evaluate", {}), store.create("evaluate", {})
    for job in (lost, alive):
        store.transition(job.id, "running")
    store.update(lost.id, heartbeat=time.time() - 60)
    store.beat(alive.id)
    assert store.sweep_lost(heartbeat_timeout_s=30) == [lost.id]
    assert store.get(lost.id).status == "failed" and "worker lost" in str(store.get(lost.id).error)
    assert store.get(alive.id).status == "running"
    assert store.sweep_lost(heartbeat_timeout_s=30) == []


def test_progress_is_stored_and_streamed(store: JobStore) -> None:
    job = store.create("finetune", {})
    store.transition(job.id, "running")
    store.report_progress(job.id, {"stage": "training", "step": 3})
    assert store.get(job.id).progress == {"stage": "training", "step": 3}
    progress = [fields["data"] for _, fields in store.events(job.id) if fields.get("type") == "progress"]
    assert progress == ['{"stage": "training", "step": 3}']


def test_workers_are_listed_while_they_beat_and_dropped_when_gone_or_silent(store: JobStore) -> None:
    store.worker_beat("host:1", timeout_s=30)
    store.worker_beat("host:2", timeout_s=30)
    assert sorted(store.live_workers(timeout_s=30)) == ["host:1", "host:2"]
    store.worker_gone("host:1")
    assert store.live_workers(timeout_s=30) == ["host:2"]
    time.sleep(0.05)
    assert store.live_workers(timeout_s=0.01) == []  # silent longer than the timeout


def test_a_job_the_sweep_failed_takes_no_more_beats_or_progress_from_its_worker(store: JobStore) -> None:
    job = store.create("reindex", {})
    store.transition(job.id, "running")
    assert store.report_progress(job.id, {"stage": "reindexing", "done": 10, "total": 100})
    store.update(job.id, heartbeat=time.time() - 60)  # its worker was stopped (SIGSTOP) past the timeout
    assert store.sweep_lost(heartbeat_timeout_s=30) == [job.id]
    # The worker resumes: its beat and its progress are refused, and tell it so.
    assert not store.beat(job.id)
    assert not store.report_progress(job.id, {"stage": "reindexing", "done": 90, "total": 100})
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.heartbeat is not None and failed.heartbeat < time.time() - 50
    assert failed.progress == {"stage": "failed", "last_stage": "reindexing", "done": 10, "total": 100}
    kinds = [fields.get("status") or fields["type"] for _, fields in store.events(job.id)]
    assert kinds == ["queued", "running", "progress", "failed"]  # nothing after the failure


def test_a_finished_jobs_progress_names_its_final_status(store: JobStore) -> None:
    quiet = store.create("evaluate", {})
    store.transition(quiet.id, "running")
    store.transition(quiet.id, "succeeded")
    assert store.get(quiet.id).progress == {"stage": "succeeded"}  # it never reported: the status alone
    cancelled = store.create("evaluate", {})
    store.request_cancel(cancelled.id)
    assert store.get(cancelled.id).progress == {"stage": "cancelled"}


def test_a_job_that_beats_but_does_not_advance_is_failed_with_the_reason(store: JobStore) -> None:
    stuck, moving = store.create("reindex", {}), store.create("reindex", {})
    for job in (stuck, moving):
        store.transition(job.id, "running")
        store.report_progress(job.id, {"stage": "reindexing", "done": 5})
        store.update(job.id, progress_at=time.time() - 120)
    # Both beat; `moving` advances, `stuck` reports the same position again (not an advance).
    store.report_progress(moving.id, {"stage": "reindexing", "done": 6})
    store.report_progress(stuck.id, {"stage": "reindexing", "done": 5}, advanced=False)
    assert store.sweep_lost(heartbeat_timeout_s=30) == []  # alive, both
    assert store.sweep_stalled(stall_timeout_s=60) == [stuck.id]
    failed = store.get(stuck.id)
    assert failed.status == "failed" and "no progress for 12" in str(failed.error) and "reindexing" in str(failed.error)
    assert store.get(moving.id).status == "running"
    assert not store.beat(stuck.id)  # its worker is fenced

"""A step's pace: measured from its first report, so work done before it does not count."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from xling.state.jobstore import JobStore
from xling.state.keys import RedisKeys
from xling.worker.progress import Pace
from xling.worker.runner import JobContext


def test_the_rate_counts_from_the_first_report_and_the_eta_follows_it() -> None:
    pace = Pace()
    first = pace.fields(300, 1_000)  # 300 documents were done before (kept chunks): no rate yet
    assert first == {"done": 300, "total": 1_000, "rate_per_s": None, "eta_s": None}
    time.sleep(0.2)
    later = pace.fields(400, 1_000)
    assert later["rate_per_s"] == pytest.approx(100 / 0.2, rel=0.5)
    assert later["eta_s"] == pytest.approx(600 / later["rate_per_s"], rel=0.01)
    assert pace.fields(400, 1_000)["rate_per_s"] is not None  # no progress since: the rate falls, it is not lost


def test_a_report_that_changes_only_the_pace_is_not_an_advance(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = JobStore(client, RedisKeys("progress-test"))
    job = store.create("reindex", {})
    store.transition(job.id, "running")
    ctx: Any = JobContext(None, store, None, client, None, store.get(job.id))  # type: ignore[arg-type]
    ctx.report("reindexing", done=5, total=10, rate_per_s=1.0, eta_s=5.0)
    first = store.get(job.id).progress_at
    time.sleep(0.01)
    ctx.report("reindexing", done=5, total=10, rate_per_s=0.5, eta_s=10.0)  # a coordinator waiting on others
    assert store.get(job.id).progress_at == first and store.get(job.id).progress["rate_per_s"] == 0.5
    ctx.report("reindexing", done=6, total=10, rate_per_s=0.6, eta_s=6.7)
    later = store.get(job.id).progress_at
    assert first is not None and later is not None and later > first

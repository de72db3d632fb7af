"""The one loop behind every background task that talks to Redis: outages logged once, failures survived."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from xling.state.polling import poll


def run_steps(outcomes: list[Exception | None], **options: object) -> list[str | None]:
    """Poll a step that raises (or not) as `outcomes` say, until they run out; returns what on_outcome heard."""
    stop = threading.Event()
    steps = iter(outcomes)
    heard: list[str | None] = []

    def step() -> None:
        outcome = next(steps, None)
        if len(heard) + 1 >= len(outcomes):
            stop.set()
        if outcome is not None:
            raise outcome

    poll(step, stop, every_s=0.001, what="test loop", logger=logging.getLogger("test.polling"),
         on_outcome=heard.append, **options)  # type: ignore[arg-type]
    return heard


def test_an_outage_is_logged_when_it_starts_and_ends_not_per_retry(caplog: pytest.LogCaptureFixture) -> None:
    down = redis.ConnectionError("Connection refused")
    with caplog.at_level(logging.INFO, logger="test.polling"):
        heard = run_steps([down, down, down, None, None])
    messages = [r.getMessage() for r in caplog.records]
    assert sum("redis unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    assert not any(r.exc_info for r in caplog.records)
    assert heard == ["redis unreachable: Connection refused"] * 3 + [None, None]


def test_any_other_failure_is_logged_with_its_traceback_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="test.polling"):
        heard = run_steps([ValueError("bad batch"), None], retry_s=0.001)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["test loop failed"]
    assert heard == ["ValueError: bad batch", None]


def test_a_stop_before_the_first_wait_runs_no_step() -> None:
    stop = threading.Event()
    stop.set()
    ran: list[int] = []
    poll(lambda: ran.append(1), stop, every_s=10, what="idle", logger=logging.getLogger("test.polling"))
    assert ran == []

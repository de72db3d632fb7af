"""Background loops that talk to Redis: one way to run a step every so often, survive outages, and say so once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)


class OutageNotice:
    """Logs that Redis became unreachable once, and once more when it is back, not on every retry.

    Background loops (applier, swap watcher, job sweep, worker presence) retry every second or so;
    a traceback per retry would bury the one line an operator needs.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger, self.what, self.down = logger, what, False

    def failed(self, exc: Exception) -> None:
        if not self.down:
            self.logger.warning("%s: redis unreachable (%s); retrying until it is back", self.what, exc)
        self.down = True

    def recovered(self) -> None:
        if self.down:
            self.logger.info("%s: redis reachable again", self.what)
        self.down = False


def poll(
    step: Callable[[], None],
    stop: threading.Event,
    *,
    every_s: float,
    what: str,
    logger: logging.Logger,
    wait_first: bool = True,
    retry_s: float | None = None,
    max_retry_s: float = 10.0,
    on_outcome: Callable[[str | None], None] | None = None,
) -> None:
    """Call `step` every `every_s` seconds until `stop` is set; neither an outage nor a failure ends the loop.

    A Redis outage is logged when it starts and when it ends (OutageNotice); any other failure with its
    traceback. After a failure the next try waits `retry_s` (default `every_s`): after an outage that wait
    stays the same, so the loop notices Redis is back at once; after any other failure it doubles up to
    `max_retry_s`. `on_outcome` hears None after a step that worked, else what went wrong, in one line.
    """
    outage = OutageNotice(logger, what)
    first_retry = every_s if retry_s is None else retry_s
    retry = first_retry
    if wait_first and stop.wait(every_s):
        return
    while not stop.is_set():
        wait, error = every_s, None
        try:
            step()
            outage.recovered()
            retry = first_retry
        except OUTAGE_ERRORS as exc:
            outage.failed(exc)
            wait, error = first_retry, f"redis unreachable: {exc}"
        except Exception as exc:
            logger.exception("%s failed", what)
            wait, error = retry, f"{type(exc).__name__}: {exc}"
            retry = min(retry * 2, max_retry_s)
        if on_outcome is not None:
            on_outcome(error)
        if stop.wait(wait):
            return

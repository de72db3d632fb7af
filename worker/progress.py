"""How fast a job's step goes, for its progress: the rate since the step's first report, and the time left at it."""

from __future__ import annotations

import time
from typing import Any

PACE_FIELDS = ("rate_per_s", "eta_s")  # not progress themselves: they change while `done` stands still


class Pace:
    """One per step (its `done` counts up to its `total`). The first report is the baseline, so that work done
    before it (chunks another worker wrote, a phase before this step) does not inflate the rate."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def fields(self, done: int, total: int) -> dict[str, Any]:
        """done, total, rate_per_s and eta_s (None until a second report has something to measure)."""
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        started, done_then = self._first
        elapsed = now - started
        rate = (done - done_then) / elapsed if elapsed > 0 and done > done_then else None
        eta = (total - done) / rate if rate else None
        return {"done": done, "total": total, "rate_per_s": None if rate is None else round(rate, 1),
                "eta_s": None if eta is None else round(eta, 1)}

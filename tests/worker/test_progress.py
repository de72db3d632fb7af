"""A step's pace: measured from its first report, so work done before it does not count."""

from __future__ import annotations

import time

import pytest

from xling.worker.progress import Pace


def test_the_rate_counts_from_the_first_report_and_the_eta_follows_it() -> None:
    pace = Pace()
    first = pace.fields(300, 1_000)  # 300 documents were done before (kept chunks): no rate yet
    assert first == {"done": 300, "total": 1_000, "rate_per_s": None, "eta_s": None}
    time.sleep(0.2)
    later = pace.fields(400, 1_000)
    assert later["rate_per_s"] == pytest.approx(100 / 0.2, rel=0.5)
    assert later["eta_s"] == pytest.approx(600 / later["rate_per_s"], rel=0.01)
    assert pace.fields(400, 1_000)["rate_per_s"] is not None  # no progress since: the rate falls, it is not lost

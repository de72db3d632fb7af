"""The range board of a spread reindex, on a real Redis: claims, renewals, lapses, completion."""

from __future__ import annotations

import time

import redis

from xling.state.keys import RedisKeys
from xling.state.reindex_ranges import RangeBoard


def board(url: str, lease_s: float = 30.0, ranges: int = 3) -> RangeBoard:
    return RangeBoard(redis.Redis.from_url(url, decode_responses=True), RedisKeys("test"), "job1", ranges, lease_s)


def test_each_range_goes_to_one_worker_until_done(redis_url: str) -> None:
    shared = board(redis_url)
    assert [shared.claim("a"), shared.claim("b"), shared.claim("a")] == [0, 1, 2]
    assert shared.claim("b") is None  # all leased
    assert shared.holders() == {0: "a", 1: "b", 2: "a"}
    shared.finish(1)
    assert shared.done() == {1} and shared.claim("c") is None  # a finished range is never handed out again
    for number in (0, 2):
        shared.finish(number)
    assert shared.done() == {0, 1, 2} and shared.holders() == {}
    shared.clear()
    assert shared.done() == set() and shared.claim("a") == 0  # a retried job starts afresh


def test_a_lapsed_lease_is_claimed_again_and_its_old_holder_told(redis_url: str) -> None:
    shared = board(redis_url, lease_s=0.2, ranges=1)
    assert shared.claim("dead") == 0
    assert shared.renew(0, "dead")
    assert shared.claim("alive") is None
    time.sleep(0.35)  # "dead" stopped renewing
    assert shared.claim("alive") == 0
    assert not shared.renew(0, "dead")  # it must leave the range to its new holder
    assert shared.renew(0, "alive") and shared.holders() == {0: "alive"}

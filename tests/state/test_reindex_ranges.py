"""The range board of a spread reindex, on a real Redis: claims, renewals, lapses, fenced completion."""

from __future__ import annotations

import time

import redis

from xling.state.keys import RedisKeys
from xling.state.reindex_ranges import RangeBoard


def board(url: str, lease_s: float = 30.0, ranges: int = 3) -> RangeBoard:
    return RangeBoard(redis.Redis.from_url(url, decode_responses=True), RedisKeys("test"), "job1", ranges, lease_s)


def test_each_range_goes_to_one_worker_until_done(redis_url: str) -> None:
    shared = board(redis_url)
    claims = [shared.claim("a"), shared.claim("b"), shared.claim("a")]
    assert [c.number for c in claims if c] == [0, 1, 2]
    assert shared.claim("b") is None  # all leased
    assert shared.holders() == {0: "a", 1: "b", 2: "a"}
    assert claims[1] is not None and shared.finish(claims[1])
    assert shared.done() == {1} and shared.claim("c") is None  # a finished range is never handed out again
    for claim in (claims[0], claims[2]):
        assert claim is not None and shared.finish(claim)
    assert shared.done() == {0, 1, 2} and shared.holders() == {}
    shared.clear()
    again = shared.claim("a")
    assert shared.done() == set() and again is not None and again.number == 0  # a retried job starts afresh


def test_a_lapsed_lease_is_claimed_again_and_its_old_holder_fenced(redis_url: str) -> None:
    shared = board(redis_url, lease_s=0.2, ranges=1)
    dead = shared.claim("dead")
    assert dead is not None and shared.renew(dead)
    assert shared.claim("alive") is None
    time.sleep(0.35)  # "dead" stopped renewing
    alive = shared.claim("alive")
    assert alive is not None and alive.number == 0
    assert not shared.renew(dead)  # it must leave the range to its new holder
    assert not shared.finish(dead) and shared.done() == set()  # and cannot mark it done under the new holder
    assert shared.renew(alive) and shared.holders() == {0: "alive"}


def test_the_same_worker_claiming_again_is_a_new_claim(redis_url: str) -> None:
    """A worker whose claim lapsed and who claims the range again holds it under a new token: its old claim (a
    thread that went on with the range's first attempt) is fenced like anyone else's."""
    shared = board(redis_url, lease_s=0.2, ranges=1)
    first = shared.claim("w")
    time.sleep(0.35)
    second = shared.claim("w")
    assert first is not None and second is not None and first.token != second.token
    assert not shared.renew(first) and shared.renew(second)
    assert shared.finish(second) and shared.done() == {0}
    assert shared.finish(first)  # the range is done: finishing it again changes nothing and is not an error


def test_a_lapsed_claim_nobody_took_may_still_finish(redis_url: str) -> None:
    shared = board(redis_url, lease_s=0.2, ranges=1)
    slow = shared.claim("slow")
    time.sleep(0.35)
    assert slow is not None and shared.finish(slow) and shared.done() == {0}

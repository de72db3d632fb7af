"""A reindex split into ranges that any worker may encode: which ranges are taken (leases) and which are done.

A range is claimed with a lease (SET NX PX) whose value is a token new to each claim (the worker's name and a
random tail), renewed by a thread while the worker lives (`state.leases.KeptLease`). A worker killed mid-range
stops renewing, the lease lapses, and the next claim takes the range again; the chunks its first holder wrote
whole are kept (`worker/reindex.py`). Finishing a range is fenced by the token: a holder whose lease lapsed
cannot mark a range done that another worker holds now.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import redis

from xling.state.keys import RedisKeys

# Renew only a lease this claim still holds: after a lapse another worker may own the range.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease, done set; ARGV: token, range. Done when this claim holds the lease, or nobody does (it lapsed
# and no one claimed it since: the holder's chunks are whole, so the range is complete); refused when another
# claim holds it.
_FINISH = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or holder == false then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 1
end
return redis.call('SISMEMBER', KEYS[2], ARGV[2])
"""

TOKEN_SEPARATOR = "#"


@dataclass(frozen=True)
class RangeClaim:
    number: int
    token: str  # the lease's value: the worker's name, '#', a tail new to this claim

    @property
    def worker(self) -> str:
        return worker_of(self.token)


def worker_of(token: str) -> str:
    return token.rsplit(TOKEN_SEPARATOR, 1)[0]


class RangeBoard:
    def __init__(self, client: redis.Redis, keys: RedisKeys, job_id: str, ranges: int, lease_s: float) -> None:
        self.client = client
        self.ranges = ranges
        self.lease_ms = max(1, int(lease_s * 1000))
        self._prefix = f"{keys.prefix}:reindex:{job_id}"
        self._done = f"{self._prefix}:done"
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)

    def _lease(self, number: int) -> str:
        return f"{self._prefix}:lease:{number}"

    def claim(self, worker: str) -> RangeClaim | None:
        """The first range neither done nor leased, now leased to `worker`; None when there is none."""
        done = self.done()
        for number in range(self.ranges):
            token = f"{worker}{TOKEN_SEPARATOR}{uuid.uuid4().hex[:12]}"
            if number not in done and self.client.set(self._lease(number), token, nx=True, px=self.lease_ms):
                if self.client.sismember(self._done, str(number)):  # finished between the read above and the claim
                    self.client.delete(self._lease(number))
                    continue
                return RangeClaim(number, token)
        return None

    def renew(self, claim: RangeClaim) -> bool:
        """Whether `claim` still holds its range (its lease is pushed back `lease_s`)."""
        return bool(self._renew(keys=[self._lease(claim.number)], args=[claim.token, self.lease_ms]))

    def finish(self, claim: RangeClaim) -> bool:
        """Mark the range done; False when another claim holds it now (this one lapsed: leave it to that one)."""
        return bool(self._finish(keys=[self._lease(claim.number), self._done], args=[claim.token, claim.number]))

    def done(self) -> set[int]:
        return {int(n) for n in self.client.smembers(self._done)}

    def holders(self) -> dict[int, str]:
        """Range -> the worker holding its lease, for ranges leased now."""
        values = self.client.mget([self._lease(n) for n in range(self.ranges)])
        return {n: worker_of(str(v)) for n, v in enumerate(values) if v is not None}

    def clear(self) -> None:
        self.client.delete(self._done, *(self._lease(n) for n in range(self.ranges)))

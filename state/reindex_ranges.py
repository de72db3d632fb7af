"""A reindex split into ranges that any worker may encode: which ranges are taken (leases) and which are done.

A range is claimed with a lease (SET NX PX) that its worker renews as it goes. A worker killed mid-range stops
renewing, the lease lapses, and the next claim takes the range again from the start; its output file is
written whole or not at all (`worker/reindex.py`), so a range finished twice is still one range's documents.
"""

from __future__ import annotations

import redis

from xling.state.keys import RedisKeys

# Renew only a lease this worker still holds: after a lapse another worker may own the range.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RangeBoard:
    def __init__(self, client: redis.Redis, keys: RedisKeys, job_id: str, ranges: int, lease_s: float) -> None:
        self.client = client
        self.ranges = ranges
        self.lease_ms = max(1, int(lease_s * 1000))
        self._prefix = f"{keys.prefix}:reindex:{job_id}"
        self._done = f"{self._prefix}:done"
        self._renew = client.register_script(_RENEW)

    def _lease(self, number: int) -> str:
        return f"{self._prefix}:lease:{number}"

    def claim(self, worker: str) -> int | None:
        """The first range neither done nor leased, now leased to `worker`; None when there is none."""
        done = self.done()
        for number in range(self.ranges):
            if number not in done and self.client.set(self._lease(number), worker, nx=True, px=self.lease_ms):
                if self.client.sismember(self._done, str(number)):  # finished between the read above and the claim
                    self.client.delete(self._lease(number))
                    continue
                return number
        return None

    def renew(self, number: int, worker: str) -> bool:
        return bool(self._renew(keys=[self._lease(number)], args=[worker, self.lease_ms]))

    def finish(self, number: int) -> None:
        with self.client.pipeline() as pipe:
            pipe.sadd(self._done, str(number))
            pipe.delete(self._lease(number))
            pipe.execute()

    def done(self) -> set[int]:
        return {int(n) for n in self.client.smembers(self._done)}

    def holders(self) -> dict[int, str]:
        """Range -> the worker holding its lease, for ranges leased now."""
        values = self.client.mget([self._lease(n) for n in range(self.ranges)])
        return {n: str(v) for n, v in enumerate(values) if v is not None}

    def clear(self) -> None:
        self.client.delete(self._done, *(self._lease(n) for n in range(self.ranges)))

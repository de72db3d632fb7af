"""A lease in Redis that names its holder: taken when nobody holds it, renewed by its holder, lapsing when the
holder stops renewing it (a crash), given back on a clean stop. One Lua script each way, so that a holder never
renews or releases a lease another took after its own lapsed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

# Take the lease when nobody holds it, renew it when this holder does; 1 when the caller holds it now.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    """The leases one holder (`holder`, unique among the replicas) takes, each for `ttl_s`; `release` gives back
    every one it took."""

    def __init__(self, redis_client: redis.Redis, holder: str, ttl_s: float) -> None:
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._hold = redis_client.register_script(_HOLD)
        self._release = redis_client.register_script(_RELEASE)
        self._taken: set[str] = set()

    def take(self, key: str) -> bool:
        """Whether this holder holds the lease now (taken, or renewed)."""
        held = bool(self._hold(keys=[key], args=[self.holder, self.ttl_ms]))
        if held:
            self._taken.add(key)
        return held

    def release(self) -> None:
        for key in self._taken:
            self._release(keys=[key], args=[self.holder])
        self._taken.clear()

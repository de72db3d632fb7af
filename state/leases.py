"""A lease in Redis that names its holder: taken when nobody holds it, renewed by its holder, lapsing when the
holder stops renewing it (a crash), given back on a clean stop. One Lua script each way, so that a holder never
renews or releases a lease another took after its own lapsed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from xling.state.polling import OUTAGE_ERRORS, OutageNotice

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

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


class KeptLease:
    """A lease renewed by a thread of its own while a block of work runs, so that it measures whether the holder's
    process is alive, not how fast its work goes (a chunk slower than the lease no longer loses it).

    `renew()` says whether the holder still holds the lease (False: it lapsed and may be someone else's; the
    thread stops). `held` is what the work checks at its commit points: False once a renewal said so, or once
    the last renewal that worked is `ttl_s` old (the process was stopped, or Redis unreachable that long: another
    holder may have the lease by now, whatever Redis says later). The clock is monotonic and counts while the
    process is stopped.
    """

    def __init__(self, renew: Callable[[], bool], ttl_s: float, what: str) -> None:
        self._renew = renew
        self.ttl_s = ttl_s
        self.what = what
        self._renewed_at = time.monotonic()  # taken just before this: a fresh claim counts as a renewal
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{what}", daemon=True)

    @property
    def held(self) -> bool:
        return not self._lost.is_set() and time.monotonic() - self._renewed_at < self.ttl_s

    def _keep(self) -> None:
        outage = OutageNotice(log, f"lease {self.what}")
        while not self._stop.wait(self.ttl_s / 3):
            asked_at = time.monotonic()  # before the call: a reply that comes late proves less
            try:
                still_ours = self._renew()
            except OUTAGE_ERRORS as exc:
                outage.failed(exc)
                continue
            outage.recovered()
            if not still_ours:
                self._lost.set()
                return
            self._renewed_at = asked_at

    def __enter__(self) -> KeptLease:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
                 ) -> None:
        self._stop.set()
        self._thread.join()

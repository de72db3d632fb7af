"""Doc-log retention: trim the Redis stream behind the oldest offset anyone still needs.

Without trimming the log grows with every write, not with the corpus. Entries are needed by:
- each api replica, from its index's applied offset and from its last snapshot's offset (a restart
  replays from the snapshot);
- a build in progress (start-up without snapshot, a reindex job on the worker, a rebuild): from the
  log offset it read before scanning the document hash.

Each of them *holds* its offset in a Redis hash with an expiry, refreshed while it lives. Trimming
removes entries below the smallest live hold (`XTRIM MINID ~`) and records that point in
`trimmed_to`, which only moves forward. Whoever finds its offset below `trimmed_to` (a replica that
was away longer than its hold lasted, a snapshot older than the trim point) rebuilds from the
document hash, which always holds every document: trimming loses no data, only replay history.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from xling.state.docstore import START_OFFSET, offset_key
from xling.state.keys import RedisKeys

# Atomic: drop expired holds, pick the smallest live one, move `trimmed_to` forward (never back), trim.
_TRIM = """
local holds = redis.call('HGETALL', KEYS[1])
local best, best_ms, best_seq = nil, 0, 0
for i = 1, #holds, 2 do
  local hold = cjson.decode(holds[i + 1])
  if tonumber(hold['until']) < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], holds[i])
  else
    local ms, seq = string.match(hold['offset'], '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    if best == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
      best, best_ms, best_seq = hold['offset'], ms, seq
    end
  end
end
if best == nil then return false end
local current = redis.call('GET', KEYS[2])
if current then
  local ms, seq = string.match(current, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if best_ms < ms or (best_ms == ms and best_seq < seq) then best = current end
end
redis.call('SET', KEYS[2], best)
-- LIMIT 0: an approximate trim otherwise evicts at most 100 macro nodes (10,000 entries) per call, fewer than
-- a busy log gains between two trims
redis.call('XTRIM', KEYS[3], 'MINID', '~', best, 'LIMIT', 0)
return best
"""


class LogTrimmed(Exception):
    """The log no longer holds the entries after an offset: rebuild from the document hash."""


def is_behind(offset: str, trimmed_to: str) -> bool:
    """Whether entries after `offset` may have been trimmed (they are kept from `trimmed_to` on)."""
    return offset_key(offset) < offset_key(trimmed_to)


class LogRetention:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client: Any = client
        self.keys = keys
        self._trim = client.register_script(_TRIM)

    def hold(self, holder: str, offset: str, ttl_s: float) -> None:
        """Keep entries after `offset` for `ttl_s` seconds (refresh to keep them longer)."""
        value = json.dumps({"offset": offset, "until": time.time() + ttl_s})
        self.client.hset(self.keys.log_holds, holder, value)

    def trim(self) -> str | None:
        """Trim behind the smallest live hold; returns the new trim point (None: no holds, nothing trimmed)."""
        point = self._trim(keys=[self.keys.log_holds, self.keys.log_trimmed_to, self.keys.doclog], args=[time.time()])
        return str(point) if point else None

    def trimmed_to(self) -> str:
        value = self.client.get(self.keys.log_trimmed_to)
        return str(value) if value else START_OFFSET

    def check(self, offset: str) -> None:
        """Raise LogTrimmed if replaying from `offset` would miss trimmed entries."""
        trimmed = self.trimmed_to()
        if is_behind(offset, trimmed):
            raise LogTrimmed(f"the doc log was trimmed to {trimmed}, past offset {offset}")

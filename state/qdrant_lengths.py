"""A Qdrant collection's BM25 length tally in Redis (models/index/sparse.py `LengthTally`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis


class RedisLengths:
    """A collection's BM25 length tally (`sparse.LengthTally`) in a Redis hash, so that whichever replica holds
    the writer lease continues it; only that writer adds to it. A writer that dies between a stored write and
    its tally leaves the tally short by that batch (the mean length moves a little); the next rebuild counts
    afresh."""

    def __init__(self, redis_client: redis.Redis, key: str) -> None:
        self.redis = redis_client
        self.key = key

    def totals(self, parts: Sequence[str]) -> dict[str, tuple[int, int]]:
        if not parts:
            return {}
        fields = [f"{what}:{part}" for part in parts for what in ("docs", "terms")]
        values = iter(int(value or 0) for value in self.redis.hmget(self.key, fields))
        return {part: (next(values), next(values)) for part in parts}

    def add(self, changes: dict[str, tuple[int, int]]) -> None:
        pipe = self.redis.pipeline()
        for part, (docs, length) in changes.items():
            pipe.hincrby(self.key, f"docs:{part}", docs)
            pipe.hincrby(self.key, f"terms:{part}", length)
        pipe.execute()

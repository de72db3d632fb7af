"""Documents in Redis: the document hash plus the doc log (a stream), written together atomically.

Async functions serve the HTTP routes; sync ones serve the applier thread and the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis

from xling.models.index.vector_index import DocEntry, Scalar
from xling.state.keys import RedisKeys

START_OFFSET = "0-0"

# Deletes go through a script so that ids that do not exist add nothing to the log.
_DELETE_SCRIPT = """
local missing = {}
local last = ''
for _, id in ipairs(ARGV) do
  if redis.call('HDEL', KEYS[1], id) == 1 then
    last = redis.call('XADD', KEYS[2], '*', 'op', 'delete', 'id', id)
  else
    table.insert(missing, id)
  end
end
return {last, missing}
"""


@dataclass
class StoredDoc:
    text: str
    lang: str | None = None
    metadata: dict[str, Scalar] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"text": self.text, "lang": self.lang, "metadata": self.metadata}, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> StoredDoc:
        data = json.loads(raw)
        return cls(data["text"], data.get("lang"), data.get("metadata") or {})

    def entry(self, doc_id: str) -> DocEntry:
        return DocEntry(doc_id, self.lang, self.metadata)


@dataclass(frozen=True)
class LogEntry:
    offset: str
    op: str  # "upsert" | "delete"
    doc_id: str


def offset_key(offset: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence)."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


class DocStore:
    """Async access for the api's routes."""

    def __init__(self, client: aredis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys
        self._delete = client.register_script(_DELETE_SCRIPT)

    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]]) -> str:
        """Write documents and their log entries in one MULTI/EXEC; returns the last log offset."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.docs, mapping={doc_id: doc.to_json() for doc_id, doc in docs})
            for doc_id, _ in docs:
                pipe.xadd(self.keys.doclog, {"op": "upsert", "id": doc_id})
            results = await pipe.execute()
        return str(results[-1])

    async def delete(self, ids: Sequence[str]) -> tuple[str | None, list[str]]:
        """Delete documents; returns the last log offset (None if nothing existed) and the missing ids."""
        last, missing = await self._delete(keys=[self.keys.docs, self.keys.doclog], args=list(ids))
        return (str(last) or None), [str(m) for m in missing]

    async def get_many(self, ids: Sequence[str]) -> list[StoredDoc | None]:
        if not ids:
            return []
        raw: list[str | None] = await self.client.hmget(self.keys.docs, list(ids))  # type: ignore[assignment]
        return [StoredDoc.from_json(r) if r is not None else None for r in raw]

    async def count(self) -> int:
        return int(await self.client.hlen(self.keys.docs))

    async def log_length(self) -> int:
        return int(await self.client.xlen(self.keys.doclog))

    async def last_offset(self) -> str:
        newest = await self.client.xrevrange(self.keys.doclog, count=1)
        return str(newest[0][0]) if newest else START_OFFSET


class DocReader:
    """Blocking reads for the applier thread and the worker."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def read_log(self, after: str, count: int, block_ms: int | None = None) -> list[LogEntry]:
        reply: Any = self.client.xread({self.keys.doclog: after}, count=count, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return [LogEntry(str(offset), fields["op"], fields["id"]) for offset, fields in entries]

    def wait_for_log(self, after: str, block_ms: int) -> None:
        """Block until an entry after `after` exists or `block_ms` passes (entries are not consumed)."""
        self.client.xread({self.keys.doclog: after}, count=1, block=block_ms)

    def last_offset(self) -> str:
        newest: Any = self.client.xrevrange(self.keys.doclog, count=1)
        return str(newest[0][0]) if newest else START_OFFSET

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDoc]:
        if not ids:
            return {}
        raw: Any = self.client.hmget(self.keys.docs, list(ids))
        return {doc_id: StoredDoc.from_json(r) for doc_id, r in zip(ids, raw, strict=True) if r is not None}

    def iter_all(self, chunk: int = 1_000) -> Iterator[list[tuple[str, StoredDoc]]]:
        """Every document, in chunks; documents written meanwhile may or may not appear."""
        # HSCAN may return a field twice; a dict keeps each id once per chunk.
        batch: dict[str, StoredDoc] = {}
        for doc_id, raw in self.client.hscan_iter(self.keys.docs, count=chunk):
            batch[str(doc_id)] = StoredDoc.from_json(raw)
            if len(batch) >= chunk:
                yield list(batch.items())
                batch = {}
        if batch:
            yield list(batch.items())

    def count(self) -> int:
        return int(self.client.hlen(self.keys.docs))

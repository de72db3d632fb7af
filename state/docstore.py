"""Documents in Redis: the document hash plus the doc log (a stream), written together atomically.

With XLING_DOCUMENT_STORE=qdrant there is no hash: each log entry carries its document (an "inline" entry), the
applier writes it into the serving Qdrant collection, and that collection's payload is where documents are read
(state/qdrant_documents.py, CollectionCorpus).

Async functions serve the HTTP routes; sync ones serve the applier thread and the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import redis.asyncio as aredis
from redis.commands.core import AsyncScript

from xling.models.index.vector_index import DocEntry, Scalar
from xling.state.errors import StoreUnavailable
from xling.state.keys import RedisKeys

START_OFFSET = "0-0"

# A write is one script (atomic, like MULTI/EXEC) so that a WAIT sent after it on the same connection covers it:
# WAIT counts the replicas that hold everything its own connection wrote, and a pipeline keeps both on one.
# ARGV[1] = '1': the document goes into the hash and its entry carries the id; '0': the entry carries the document.
_UPSERT_SCRIPT = """
local last = ''
for i = 2, #ARGV, 2 do
  if ARGV[1] == '1' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    last = redis.call('XADD', KEYS[2], '*', 'op', 'upsert', 'id', ARGV[i])
  else
    last = redis.call('XADD', KEYS[2], '*', 'op', 'upsert', 'id', ARGV[i], 'doc', ARGV[i + 1])
  end
end
return last
"""

# Deletes go through a script so that ids that do not exist add nothing to the log. ARGV[1] = '1': existence is
# the hash's; '0': the caller looked the ids up (in the collection) and passes only those that exist, and each
# entry says itself that the document is gone (an empty `doc`).
_DELETE_SCRIPT = """
local missing = {}
local last = ''
for i = 2, #ARGV do
  local id = ARGV[i]
  if ARGV[1] ~= '1' then
    last = redis.call('XADD', KEYS[2], '*', 'op', 'delete', 'id', id, 'doc', '')
  elseif redis.call('HDEL', KEYS[1], id) == 1 then
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
    inline: bool = False  # the entry says the document's state itself (XLING_DOCUMENT_STORE=qdrant)
    doc: StoredDoc | None = None  # an inline upsert's document

    @classmethod
    def parse(cls, offset: str, fields: dict[str, str]) -> LogEntry:
        if "doc" not in fields:
            return cls(offset, fields["op"], fields["id"])
        doc = StoredDoc.from_json(fields["doc"]) if fields["doc"] else None
        return cls(offset, fields["op"], fields["id"], inline=True, doc=doc)


class Corpus(Protocol):
    """Every document, as a build reads it: the hash (DocReader), or the serving collection's payload
    (qdrant_documents.CollectionCorpus). A build replays the log from `start_offset` after reading, so documents
    written while it reads may or may not appear in `iter_all`."""

    def start_offset(self) -> str:
        """Where the log must be replayed from once the corpus is read (read before reading it)."""
        ...

    def iter_all(self, chunk: int = 1_000) -> Iterator[list[tuple[str, StoredDoc]]]: ...

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDoc]: ...

    def count(self) -> int: ...


def offset_key(offset: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence)."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


class ReplicaAcks:
    """How many replicas must hold a write before it is acknowledged: `wanted`, or every replica the master has
    when it has fewer (none: no wait). The master's replica count is read at most every `refresh_s`, and at once
    after a wait fell short (a replica may have left)."""

    def __init__(self, wanted: int, timeout_ms: int, refresh_s: float = 5.0) -> None:
        self.wanted = wanted
        self.timeout_ms = timeout_ms
        self.refresh_s = refresh_s
        self._replicas = 0
        self._read_at = -float("inf")

    async def needed(self, client: aredis.Redis) -> int:
        if self.wanted == 0:
            return 0
        if time.monotonic() - self._read_at > self.refresh_s:
            info = await client.info("replication")
            self._replicas, self._read_at = int(info.get("connected_slaves", 0)), time.monotonic()
        return min(self.wanted, self._replicas)

    def fell_short(self) -> None:
        self._read_at = -float("inf")


class DocStore:
    """Async access for the api's routes."""

    def __init__(
        self, client: aredis.Redis, keys: RedisKeys, acks: ReplicaAcks | None = None, *, in_hash: bool = True
    ) -> None:
        """`in_hash`: documents go into the hash (False: into the log entries only, XLING_DOCUMENT_STORE=qdrant;
        then reads by id and counts are the collection's, and `get_many`/`count` here see nothing)."""
        self.client = client
        self.keys = keys
        self.acks = acks or ReplicaAcks(0, 0)
        self.in_hash = in_hash
        self._mode = "1" if in_hash else "0"
        self._upsert = client.register_script(_UPSERT_SCRIPT)
        self._delete = client.register_script(_DELETE_SCRIPT)

    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]]) -> str:
        """Write documents and their log entries atomically; returns the last log offset."""
        args = [self._mode, *(part for doc_id, doc in docs for part in (doc_id, doc.to_json()))]
        return str(await self._write(self._upsert, args))

    async def delete(self, ids: Sequence[str]) -> tuple[str | None, list[str]]:
        """Delete documents; returns the last log offset (None if nothing existed) and the missing ids. Without
        the hash, pass only ids that exist: each is logged as deleted."""
        last, missing = await self._write(self._delete, [self._mode, *ids])
        return (str(last) or None), [str(m) for m in missing]

    async def _write(self, script: AsyncScript, args: list[str]) -> Any:
        """Run a write script; with replicas, WAIT for them on the same connection before answering."""
        needed = await self.acks.needed(self.client)
        async with self.client.pipeline(transaction=False) as pipe:
            await script(keys=[self.keys.docs, self.keys.doclog], args=args, client=pipe)
            if needed:
                pipe.wait(needed, self.acks.timeout_ms)
            results = await pipe.execute()
        if needed and int(results[1]) < needed:
            self.acks.fell_short()
            raise StoreUnavailable(
                f"the write reached the Redis master but only {results[1]} of {needed} replicas within "
                f"{self.acks.timeout_ms} ms; it may or may not survive a failover: retry it (writes are idempotent)"
            )
        return results[0]

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
    """Blocking reads for the applier thread and the worker: the log, and the hash as a Corpus."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def read_log(self, after: str, count: int, block_ms: int | None = None) -> list[LogEntry]:
        reply: Any = self.client.xread({self.keys.doclog: after}, count=count, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return [LogEntry.parse(str(offset), fields) for offset, fields in entries]

    def wait_for_log(self, after: str, block_ms: int) -> None:
        """Block until an entry after `after` exists or `block_ms` passes (entries are not consumed)."""
        self.client.xread({self.keys.doclog: after}, count=1, block=block_ms)

    def last_offset(self) -> str:
        newest: Any = self.client.xrevrange(self.keys.doclog, count=1)
        return str(newest[0][0]) if newest else START_OFFSET

    def start_offset(self) -> str:
        """The hash holds every document the log up to here wrote: replay after it."""
        return self.last_offset()

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

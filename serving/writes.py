"""Writes, read-your-writes: a document write is durable once the doc log holds it (DocStore), and answered once
this process's index has applied it too (the watermark), or 503 past the wait (stored, not yet searchable): by
default `write_timeout_s`, or what the client asked for, down to not waiting at all (the answer then carries the
log offset, which `applied` waits for later)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xling.serving.applier import Watermark
from xling.serving.documents import Documents
from xling.state.docstore import DocStore, StoredDoc
from xling.state.errors import NotFound, WriteTimeout


class Writes:
    def __init__(self, docs: DocStore, documents: Documents, watermark: Watermark, ready: Callable[[], bool]) -> None:
        self.docs = docs
        self.documents = documents
        self.watermark = watermark
        self.ready = ready

    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]], wait_s: float | None) -> str:
        """Store these documents; return their log offset once this replica applied them, waiting up to `wait_s`
        (None: not at all)."""
        offset = await self.docs.upsert(docs)
        await self._await_applied(offset, wait_s)
        return offset

    async def applied(self, offset: str, wait_s: float) -> bool:
        """Whether this replica has applied the log up to `offset`, waiting up to `wait_s` for it."""
        return await self.watermark.wait_for(offset, wait_s)

    async def delete(
        self, ids: Sequence[str], wait_s: float | None, *, must_exist: bool = False
    ) -> tuple[str | None, list[str]]:
        """Delete these documents; returns the log offset (None: nothing to delete) and the ids that did not
        exist (NotFound for the first, with `must_exist`)."""
        if self.documents.in_tier:  # no hash to say which exist: the serving index's tier does
            found = await self.documents.get_many(ids)
            missing = [doc_id for doc_id, doc in zip(ids, found, strict=True) if doc is None]
            offset, _ = await self.docs.delete([doc_id for doc_id in ids if doc_id not in missing])
        else:
            offset, missing = await self.docs.delete(ids)
        if must_exist and missing:
            raise NotFound(f"no document with id {missing[0]!r}")
        if offset is not None:
            await self._await_applied(offset, wait_s)
        return offset, missing

    async def _await_applied(self, offset: str, wait_s: float | None) -> None:
        """Return once this process's index holds the write (it is durable already)."""
        if wait_s is None:
            return
        if not await self.watermark.wait_for(offset, wait_s):
            state = "the index is still loading" if not self.ready() else "the applier is behind"
            raise WriteTimeout(
                f"write stored durably (log offset {offset}) but not yet searchable after {wait_s:g}s: {state}; "
                f"GET /index/applied?offset={offset}&wait=SECONDS waits on, or send the write with ?wait=SECONDS"
            )

"""Writes, read-your-writes: a document write is durable once the doc log holds it (DocStore), and answered once
this process's index has applied it too (the watermark), or 503 past `write_timeout_s` (stored, not yet
searchable)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xling.serving.applier import Watermark
from xling.serving.documents import Documents
from xling.state.docstore import DocStore, StoredDoc
from xling.state.errors import NotFound, WriteTimeout
from xling.state.settings import Settings


class Writes:
    def __init__(self, settings: Settings, docs: DocStore, documents: Documents, watermark: Watermark,
                 ready: Callable[[], bool]) -> None:
        self.timeout_s = settings.write_timeout_s
        self.docs = docs
        self.documents = documents
        self.watermark = watermark
        self.ready = ready

    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]]) -> str:
        offset = await self.docs.upsert(docs)
        await self._await_applied(offset)
        return offset

    async def delete(self, ids: Sequence[str], *, must_exist: bool = False) -> list[str]:
        """Delete these documents; returns the ids that did not exist (NotFound for the first, with
        `must_exist`)."""
        if self.documents.in_tier:  # no hash to say which exist: the serving index's tier does
            found = await self.documents.get_many(ids)
            missing = [doc_id for doc_id, doc in zip(ids, found, strict=True) if doc is None]
            offset, _ = await self.docs.delete([doc_id for doc_id in ids if doc_id not in missing])
        else:
            offset, missing = await self.docs.delete(ids)
        if must_exist and missing:
            raise NotFound(f"no document with id {missing[0]!r}")
        if offset is not None:
            await self._await_applied(offset)
        return missing

    async def _await_applied(self, offset: str) -> None:
        """Return once this process's index holds the write (it is durable already)."""
        if not await self.watermark.wait_for(offset, self.timeout_s):
            state = "the index is still loading" if not self.ready() else "the applier is behind"
            raise WriteTimeout(
                f"write stored durably (log offset {offset}) but not yet searchable after {self.timeout_s:g}s: "
                f"{state}"
            )

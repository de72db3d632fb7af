"""Documents of record as the api reads them: the Redis hash, or with XLING_DOCUMENT_STORE=qdrant the payload of
the serving pair's collection (no hash there)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from xling.state.docstore import DocStore, StoredDoc
from xling.state.indexing import ServingPair
from xling.state.settings import Settings

if TYPE_CHECKING:  # qdrant-client is imported only where it is used
    from xling.state.qdrant_store import QdrantStore


class Documents:
    def __init__(self, settings: Settings, docs: DocStore, qdrant: QdrantStore | None,
                 pair: Callable[[], ServingPair]) -> None:
        if settings.documents_in_qdrant and qdrant is None:
            raise ValueError("documents in Qdrant need XLING_INDEX=qdrant")
        self.in_qdrant = settings.documents_in_qdrant
        self.docs = docs
        self.qdrant = qdrant
        self.pair = pair

    async def get_many(self, ids: Sequence[str], pair: ServingPair | None = None) -> list[StoredDoc | None]:
        """The stored documents of these ids, in order (None: no such document); with documents in Qdrant, those
        of `pair`'s collection (by default the serving one)."""
        if not self.in_qdrant:
            return await self.docs.get_many(ids)
        assert self.qdrant is not None
        corpus = self.qdrant.documents_of(pair or self.pair())
        found = await asyncio.to_thread(corpus.get_many, ids)
        return [found.get(doc_id) for doc_id in ids]

    async def count(self) -> int:
        if not self.in_qdrant:
            return await self.docs.count()
        return await asyncio.to_thread(len, self.pair().index)

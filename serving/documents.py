"""Documents of record as the api reads them: the Redis hash, or where the index tier keeps them (a Qdrant
collection's payload, XLING_DOCUMENT_STORE=qdrant: no hash there)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xling.serving.tiers import IndexTier
from xling.state.docstore import DocStore, StoredDoc
from xling.state.indexing import ServingPair


class Documents:
    def __init__(self, docs: DocStore, tier: IndexTier, pair: Callable[[], ServingPair]) -> None:
        self.docs = docs
        self.tier = tier
        self.pair = pair

    @property
    def in_tier(self) -> bool:
        return self.tier.keeps_documents

    async def get_many(self, ids: Sequence[str], pair: ServingPair | None = None) -> list[StoredDoc | None]:
        """The stored documents of these ids, in order (None: no such document); kept by the tier, those of
        `pair`'s index (by default the serving one)."""
        if not self.in_tier:
            return await self.docs.get_many(ids)
        return await self.tier.documents(ids, pair or self.pair())

    async def count(self) -> int:
        return await self.tier.count(self.pair()) if self.in_tier else await self.docs.count()

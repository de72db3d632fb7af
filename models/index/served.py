"""What every index tier serves, whichever holds the vectors: FAISS in this process (vector_index.VectorIndex, flat
or hnsw) or a Qdrant collection (qdrant_index.QdrantIndex). The serving path, builds and the applier use an index
only through this; tests/models/test_index_conformance.py runs every kind through the same tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from xling.models.index.neighbours import Neighbours
from xling.models.index.slots import DocEntry, Scalar


class ServedIndex(Protocol):
    """Unit vectors under string ids (inner product = cosine), each with its language and metadata."""

    dim: int
    model_version: str

    def __len__(self) -> int: ...

    def __contains__(self, ext_id: str) -> bool: ...

    def describe(self) -> dict[str, Any]:
        """What `/index/stats` shows of it."""
        ...

    def languages(self) -> dict[str, int]:
        """Documents per language."""
        ...

    def documents(self) -> list[DocEntry]: ...

    def upsert(self, docs: Sequence[DocEntry], vectors: np.ndarray, texts: Sequence[str] | None = None) -> None:
        """Add or replace; a search that follows sees them. `texts`: the documents' texts, for a tier that keeps
        them (a Qdrant collection's payload and BM25 vectors); FAISS has no use for them."""
        ...

    def remove(self, ext_ids: Iterable[str]) -> int:
        """Delete these ids (those it holds); returns how many it held."""
        ...

    def search(
        self, queries: np.ndarray, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[Neighbours]:
        """Top-k per query row among documents in any of `langs` whose metadata has every `where` pair; deleted
        documents never."""
        ...

    def scores(self, query: np.ndarray, ext_ids: Sequence[str]) -> dict[str, float]:
        """One query's inner product with each of these documents; ids it does not hold are left out."""
        ...

    def scores_many(self, queries: np.ndarray, ext_ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """`scores` for each query row and its own ids, in as few calls as the tier allows."""
        ...

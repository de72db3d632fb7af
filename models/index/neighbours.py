"""A search's hits for one query, best first: what every index tier's `search` returns.

Kept as two arrays (ids, scores), each `Neighbour` made only when one is read: a hybrid micro-batch fetches
four fusion windows of dense neighbours per query on a flat index (400 by default) and fusion reads them as
arrays; made one object at a time, they took about a fifth of the hybrid path inside the batch (profiled:
bench.hybrid_batch, bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, overload

import numpy as np


class Neighbour(NamedTuple):
    ext_id: str
    score: float


class Neighbours(Sequence[Neighbour]):
    """A query's hits, best first: `ids` (an object array of document ids) and `scores` (float32 from FAISS), equal in
    length. Reads as a sequence of `Neighbour`; slices are views."""

    __slots__ = ("ids", "scores")

    def __init__(self, ids: np.ndarray, scores: np.ndarray) -> None:
        assert len(ids) == len(scores), (len(ids), len(scores))
        self.ids = ids
        self.scores = scores

    @staticmethod
    def of(hits: Sequence[tuple[str, float]]) -> Neighbours:
        ids = np.empty(len(hits), dtype=object)
        ids[:] = [ext_id for ext_id, _ in hits]
        return Neighbours(ids, np.asarray([score for _, score in hits], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, at: int) -> Neighbour: ...
    @overload
    def __getitem__(self, at: slice) -> Neighbours: ...

    def __getitem__(self, at: int | slice) -> Neighbour | Neighbours:
        if isinstance(at, slice):
            return Neighbours(self.ids[at], self.scores[at])
        return Neighbour(self.ids[at], float(self.scores[at]))

    def __iter__(self) -> Iterator[Neighbour]:
        return (Neighbour(ext_id, score) for ext_id, score in self.pairs())

    def pairs(self) -> list[tuple[str, float]]:
        """(id, score) tuples, made in one go."""
        return list(zip(self.ids.tolist(), self.scores.tolist(), strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self.pairs() == [tuple(hit) for hit in other]
        return NotImplemented

    __hash__: Any = None  # equal to a list of the same hits: not hashable, as a list is not

    def __repr__(self) -> str:
        return f"Neighbours({self.pairs()!r})"

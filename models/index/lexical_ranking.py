"""What a lexical index answers, and how it ranks: each partition's BM25 for a query as arrays (`Scored`), a
query's answer in a batch (`LexicalAnswer`), tops merged across partitions (best first, ties by id), and BM25
scaled by the query's best for weighted fusion (`ScaledLexical`). Shared by the index in each replica
(xling.models.index.lexical) and BM25 served by Qdrant (xling.models.index.qdrant_lexical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from xling.models.index.slots import Scalar


class LexicalHit(NamedTuple):  # a tuple: a batch makes tens of thousands of them
    ext_id: str
    score: float  # BM25 in the partition that holds the document
    partition: str


@dataclass(frozen=True)
class Scored:
    """Documents of one partition and their BM25 for one query, as arrays: a batch answers for thousands."""

    ids: np.ndarray  # str
    scores: np.ndarray  # float32

    @staticmethod
    def of_hits(hits: Sequence[LexicalHit]) -> Scored:
        return Scored(np.asarray([hit.ext_id for hit in hits], dtype=object),
                      np.asarray([hit.score for hit in hits], dtype=np.float32))

    def hits(self, partition: str) -> list[LexicalHit]:
        return [LexicalHit(ext_id, score, partition)
                for ext_id, score in zip(self.ids.tolist(), self.scores.tolist(), strict=True)]

    def joined(self, more: Scored) -> Scored:
        return Scored(np.concatenate([self.ids, more.ids]), np.concatenate([self.scores, more.scores]))


@dataclass(frozen=True)
class LexicalAnswer:
    """One query's lexical answer in a batch: each partition's top `depth` among the filtered documents (best
    first), and, per partition, the BM25 of the candidates it was asked about that a term reached."""

    depth: int
    tops: dict[str, Scored]
    known: dict[str, Scored]
    asked: frozenset[str]

    def extended(self, more: LexicalAnswer) -> LexicalAnswer:
        """The same tops, with the scores of more candidates."""
        known = dict(self.known)
        for name, found in more.known.items():
            known[name] = known[name].joined(found) if name in known else found
        return LexicalAnswer(self.depth, self.tops, known, self.asked | more.asked)


def merged_top(
    parts: dict[str, Scored], depth: int, divisor: Callable[[str], float], ordered: bool = True
) -> list[tuple[str, float]]:
    """The `depth` best of every partition's scores (0: all of them), each divided by its partition's divisor
    (0: scores 0), best first and ties by id (`ordered`, else in no order): the exact merged top when each
    partition holds its own best `depth`."""
    ids, values = [], []
    for name, found in parts.items():
        by = divisor(name)
        ids.append(found.ids[:depth] if depth else found.ids)
        values.append(found.scores[: len(ids[-1])].astype(np.float64) / by if by > 0 else np.zeros(len(ids[-1])))
    if not ids:
        return []
    every, scaled = np.concatenate(ids), np.concatenate(values)
    if 0 < depth < len(scaled):  # keep the depth best and whatever ties the last of them; sort only those
        keep = scaled >= np.partition(scaled, len(scaled) - depth)[len(scaled) - depth]
        every, scaled = every[keep], scaled[keep]
    if not ordered:
        return list(zip(every.tolist(), scaled.tolist(), strict=True))
    order = best_first_order(every, scaled)
    ranked = list(zip(every[order].tolist(), scaled[order].tolist(), strict=True))
    return ranked[:depth] if depth else ranked


def best_first_order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The positions of `scores` best first, ties by id: a numeric sort, then each run of equal scores (rare)
    put in id order, so that no Python comparison runs per element."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])
    start = 0
    while start < len(tied):  # each run of consecutive tied positions: [tied[start], tied[end] + 1]
        end = start
        while end + 1 < len(tied) and tied[end + 1] == tied[end] + 1:
            end += 1
        run = slice(int(tied[start]), int(tied[end]) + 2)
        order[run] = sorted(order[run].tolist(), key=lambda at: ids[at])
        start = end + 1
    return order


class PartitionedBm25(Protocol):
    """What scaling asks of a lexical index (xling.models.index.lexical.LexicalSearch)."""

    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]: ...

    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]: ...


class ScaledLexical:
    """One query's BM25 divided by its best among the filtered documents: the best over all of them, or (with
    `per_language`) the best in each document's language partition, so that no language's documents are lifted
    as a whole. What weighted fusion adds to the cosine (xling.models.index.fusion). `first`: what a batch
    already answered for this query; the index is asked only past it."""

    def __init__(
        self,
        index: PartitionedBm25,
        text: str,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        per_language: bool,
        first: LexicalAnswer | None = None,
    ) -> None:
        self.index, self.text, self.langs, self.where, self.per_language = index, text, langs, where, per_language
        self.first = first
        self._best: dict[str, float] | None = None  # partition -> the query's best BM25 there
        self._known: dict[str, float] | None = None  # the first answer's candidates, scaled
        if first is not None and first.depth > 0:
            self._best = {name: float(found.scores[0]) for name, found in first.tops.items()}

    def top(self, depth: int) -> list[tuple[str, float]]:
        """The exact `depth` best scaled scores: each partition's best by BM25 are its best scaled, so merging
        every partition's first `depth` and cutting at `depth` misses none."""
        return merged_top(self._tops(depth), depth, self._divisor) if depth > 0 else []

    def every_top(self, depth: int) -> list[tuple[str, float]]:
        """Every partition's `depth` best, scaled, in no order (not cut at `depth`): with `floor`, what weighted
        fusion's threshold algorithm reads as the lexical ranking (it ranks only the hits it returns)."""
        return merged_top(self._tops(depth), 0, self._divisor, ordered=False)

    def floor(self, depth: int) -> float:
        """The highest scaled score a document outside `every_top(depth)` can have: the last of a partition that
        returned `depth` (it may hold more); a partition that returned fewer returned every document a query
        term reaches, so its other documents score 0."""
        tops = self._tops(depth)
        cut = [found.scores[depth - 1] / self._divisor(name) for name, found in tops.items()
               if len(found.ids) >= depth and self._divisor(name) > 0]
        return float(max(cut, default=0.0))

    def _tops(self, depth: int) -> dict[str, Scored]:
        if self.first is not None and 0 < depth <= self.first.depth:
            return {name: Scored(found.ids[:depth], found.scores[:depth]) for name, found in self.first.tops.items()}
        found = self.index.per_partition(self.text, max(depth, 1), self.langs, self.where)
        if self._best is None:
            self._best = {name: hits[0].score for name, hits in found.items()}
        return {name: Scored.of_hits(hits) for name, hits in found.items()}

    def of(self, ext_ids: Sequence[str]) -> dict[str, float]:
        if self._best is None:
            self.top(1)
        asked = self.first.asked if self.first is not None else frozenset()
        if self._known is None:
            self._known = {}
            for name, known in (self.first.known if self.first is not None else {}).items():
                by = self._divisor(name)
                scaled = known.scores.astype(np.float64) / by if by > 0 else np.zeros(len(known.ids))
                self._known.update(zip(known.ids.tolist(), scaled.tolist(), strict=True))
        found = {ext_id: self._known[ext_id] for ext_id in ext_ids if ext_id in self._known}
        rest = [ext_id for ext_id in ext_ids if ext_id not in asked]
        if rest:
            found.update({ext_id: self._scale(hit) for ext_id, hit in self.index.scores(self.text, rest).items()})
        return found

    def _divisor(self, partition: str) -> float:
        """What a partition's BM25 is divided by: the query's best there, or its best over all partitions."""
        assert self._best is not None
        return self._best.get(partition, 0.0) if self.per_language else max(self._best.values(), default=0.0)

    def _scale(self, hit: LexicalHit) -> float:
        by = self._divisor(hit.partition)
        return hit.score / by if by > 0 else 0.0


def best_first(hits: list[LexicalHit]) -> list[LexicalHit]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.ext_id))

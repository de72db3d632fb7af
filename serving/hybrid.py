"""Hybrid search's fusion, inside the micro-batch: the lexical side of a batch's hybrid queries in one call per
filter (xling.models.index.lexical answer_many: one sparse product per language partition, which gives each
partition's top and the BM25 of the dense candidates), the dense side as the batch fetched it, and each query's
exact fused top-k by the threshold algorithm (xling.models.index.fusion). A query that must look deeper raises
_Deeper; the batch then fetches the deeper neighbours of all such queries in one index call per depth, and their
BM25 in one more lexical call, round after round. Only the dense candidates that can reach the top k have their
BM25 asked (fusion.least_reaching). On a tier where a lookup by id is a round trip (Qdrant), the cosines fusion
asks for are gathered the same way (_Lookup): one call per round for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from xling.models.index.fusion import FusedHit, Fusion, SearchMode, fuse_rrf, fuse_weighted, least_reaching
from xling.models.index.lexical import LexicalSearch
from xling.models.index.lexical_ranking import LexicalAnswer, merged_top
from xling.models.index.neighbours import Neighbours
from xling.models.index.slots import Scalar
from xling.state.errors import InvalidInput
from xling.state.indexing import ServingPair


class SearchQuery(Protocol):
    """What fusion reads of a search (xling.serving.search.SearchQuery)."""

    @property
    def text(self) -> str: ...
    @property
    def k(self) -> int: ...
    @property
    def langs(self) -> tuple[str, ...]: ...
    @property
    def where(self) -> tuple[tuple[str, Scalar], ...]: ...
    @property
    def mode(self) -> SearchMode: ...
    @property
    def filter_key(self) -> tuple[tuple[str, ...], str]: ...


@dataclass(frozen=True)
class DenseAnswer:
    """A query's dense neighbours, with what a hybrid search needs to score more documents on the same pair."""

    pair: ServingPair
    neighbours: Neighbours
    vector: np.ndarray  # the query's vector, centred as the index's are
    fused: list[FusedHit] | None = None  # a hybrid query's ranking, when the batch fused it


DEEP_FETCH = 4  # on a flat index: one of the threshold algorithm's fourfold deepenings, in the batch's first scan


class _Lookup(Exception):
    """A fused ranking needs the cosines of documents outside its dense neighbours, on a tier where each lookup
    is a round trip (Qdrant): the batch looks them up, for every query that needs some, in one call."""

    def __init__(self, ext_ids: list[str]) -> None:
        super().__init__(len(ext_ids))
        self.ext_ids = ext_ids


@dataclass
class _Cosines:
    """What a batch looked up for one query's fusion: the cosines found, and every id asked (a document the
    index no longer holds has none)."""

    known: dict[str, float] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)


class _Deeper(Exception):
    """A fused ranking needs more dense neighbours than its batch fetched: the batch fetches them, for every
    query that needs them, in one call."""

    def __init__(self, depth: int) -> None:
        super().__init__(depth)
        self.depth = depth


def by_filter(queries: Sequence[SearchQuery], rows: Sequence[int] | None = None) -> list[list[int]]:
    """The rows (all, or these) grouped by the queries' filters: each group is one call to an index."""
    groups: dict[tuple[tuple[str, ...], str], list[int]] = {}
    for row in range(len(queries)) if rows is None else rows:
        groups.setdefault(queries[row].filter_key, []).append(row)
    return list(groups.values())


class HybridFusion:
    """Fuses hybrid queries on the serving pair they were searched on; `lexical` says where a pair's BM25 is
    searched (raises InvalidInput when lexical search is off); `scans_every_vector`: the index tier's search
    reads every vector whatever the depth (flat), so the dense side is fetched DEEP_FETCH times deeper at once;
    `lookups_are_round_trips`: each cosine lookup by id is a call to a server (Qdrant), so the batch gathers
    every query's lookups into one call per round."""

    def __init__(self, fusion: Fusion, lexical: Callable[[ServingPair], LexicalSearch],
                 scans_every_vector: bool = False, lookups_are_round_trips: bool = False) -> None:
        self.fusion = fusion
        self.lexical = lexical
        self.deep_fetch = DEEP_FETCH if scans_every_vector else 1
        self.batch_lookups = lookups_are_round_trips

    def fuse(self, query: SearchQuery, answer: DenseAnswer, first: LexicalAnswer, fetched: int,
             cosines: _Cosines | None = None) -> list[FusedHit]:
        """One query's exact top-k of the fused ranking among the filtered documents (xling.models.index.fusion),
        from its lexical answer in the batch (`first`) and its dense neighbours, fetched to depth `fetched`: a
        deeper look raises _Deeper, for the batch to fetch. With `cosines` (lookups batched), a cosine not
        looked up yet raises _Lookup."""
        lexical, where = self.lexical(answer.pair), dict(query.where)

        def dense_top(depth: int) -> list[tuple[str, float]]:
            found = answer.neighbours
            if depth > len(found) and len(found) >= fetched:  # the fetch was full: there may be more
                raise _Deeper(depth)
            return found[:depth].pairs()

        if self.fusion.method == "rrf":  # the batch's lexical depth is at least the window
            lexical_ranking = merged_top(first.tops, self.fusion.window, lambda _: 1.0)
            return fuse_rrf(dense_top(self.fusion.window), lexical_ranking, query.k, self.fusion)
        scaled = lexical.scaled(query.text, query.langs, where, self.fusion.normalise == "language", first)

        def dense_of(ext_ids: Sequence[str]) -> dict[str, float]:
            if cosines is None:
                return answer.pair.index.scores(answer.vector, ext_ids)
            unasked = [ext_id for ext_id in ext_ids if ext_id not in cosines.asked]
            if unasked:
                raise _Lookup(unasked)
            return {ext_id: cosines.known[ext_id] for ext_id in ext_ids if ext_id in cosines.known}

        return fuse_weighted(query.k, self.fusion, dense_top, scaled.every_top, dense_of=dense_of,
                             lexical_of=scaled.of, lexical_floor=scaled.floor)

    def fuse_batch(self, pair: ServingPair, queries: Sequence[SearchQuery], found: list[Neighbours],
                    vectors: np.ndarray) -> dict[int, list[FusedHit]]:
        """The batch's hybrid queries fused where they were searched. The queries sharing a filter ask the
        lexical index once (each partition's top and the BM25 of their dense candidates); those whose threshold
        algorithm must look deeper get their deeper dense neighbours in one FAISS call and those neighbours' BM25
        in one more lexical call, round after round, until every query's top-k is exact."""
        hybrid = [row for row, query in enumerate(queries) if query.mode == "hybrid"]
        if not hybrid:
            return {}
        try:
            lexical = self.lexical(pair)
        except InvalidInput:  # lexical search is off: each query is refused on its own (Search.run)
            return {}
        fused: dict[int, list[FusedHit]] = {}
        for rows in by_filter(queries, hybrid):
            langs, where = queries[rows[0]].langs, dict(queries[rows[0]].where)
            texts = [queries[row].text for row in rows]
            depth = max(self.dense_depth(queries[row]) for row in rows)
            neighbours = {row: found[row] for row in rows}
            fetched = {row: self.fetch_depth(queries[row]) for row in rows}
            asked = [self.bm25_wanted(queries[row], found[row]) for row in rows]
            answers = dict(zip(rows, lexical.answer_many(texts, depth, langs, where, asked), strict=True))
            cosines = {row: _Cosines() for row in rows} if self.batch_lookups else {}
            pending = rows
            while pending:
                deeper: dict[int, int] = {}
                lookups: dict[int, list[str]] = {}
                for row in pending:
                    try:
                        dense = DenseAnswer(pair, neighbours[row], vectors[row])
                        fused[row] = self.fuse(queries[row], dense, answers[row], fetched[row], cosines.get(row))
                    except _Deeper as need:
                        deeper[row] = need.depth
                    except _Lookup as need:
                        lookups[row] = need.ext_ids
                if lookups:  # one call for every query's lookups
                    at = list(lookups)
                    looked = pair.index.scores_many(vectors[at], [lookups[row] for row in at])
                    for row, found_cosines in zip(at, looked, strict=True):
                        cosines[row].known.update(found_cosines)
                        cosines[row].asked.update(lookups[row])
                pending = [*deeper, *lookups]
                if not deeper:
                    continue
                for needed in sorted(set(deeper.values())):  # one index call per depth asked for
                    at = [row for row in deeper if deeper[row] == needed]
                    for row, more in zip(at, pair.index.search(vectors[at], needed, langs, where), strict=True):
                        neighbours[row], fetched[row] = more, needed
                unasked = [[ext_id for ext_id in self.bm25_wanted(queries[row], neighbours[row])
                            if ext_id not in answers[row].asked] for row in deeper]
                extra = lexical.answer_many([queries[row].text for row in deeper], 0, langs, where, unasked)
                for row, more_lexical in zip(deeper, extra, strict=True):
                    answers[row] = answers[row].extended(more_lexical)
        return fused

    def bm25_wanted(self, query: SearchQuery, neighbours: Neighbours) -> list[str]:
        """The dense candidates whose BM25 the query's fusion may read: none for rrf (it ranks each list on its
        own), those that may reach the top k for weighted fusion (fusion.least_reaching)."""
        if self.fusion.method == "rrf":
            return []
        least = least_reaching(neighbours.scores[: query.k].tolist(), query.k, self.fusion.weight)
        wanted: list[str] = neighbours.ids[neighbours.scores.astype(np.float64) >= least].tolist()
        return wanted

    def dense_depth(self, query: SearchQuery) -> int:
        """The first depth of each ranking: k, or a fused ranking's first window."""
        return query.k if query.mode == "dense" else max(query.k, self.fusion.window)

    def fetch_depth(self, query: SearchQuery) -> int:
        """How many dense neighbours the micro-batch fetches: a weighted fusion's threshold algorithm often looks
        deeper than its first window, and a flat scan costs about the same whatever the depth (bench/RESULTS.md),
        so the batch's one scan fetches that deep at once, where another round would scan every vector again."""
        depth = self.dense_depth(query)
        return depth * self.deep_fetch if query.mode == "hybrid" and self.fusion.method == "weighted" else depth


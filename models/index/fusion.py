"""Fusing the dense and the lexical ranking of one query into one top-k.

Two forms:
- `weighted`: score = cosine + weight × BM25 / (the query's best BM25 among the filtered documents, over all
  of them or in each document's language: `normalise`). A document no query term reaches has lexical score 0,
  so across languages the dense score decides alone: a lexical ranking says nothing about documents in other
  languages, and a small weight keeps it from lifting the query's own language over the rest.
- `rrf`: reciprocal-rank fusion, Σ 1 / (rrf_k + rank) over each ranking's first `window` documents.

Both are exact among the filtered documents: `weighted` fetches both rankings to a depth n, fills in the
missing score of every candidate (a dense score for a lexical-only one, a BM25 for a dense-only one), and stops
once no unseen document can beat the k-th fused score (the threshold algorithm); otherwise it fetches the dense
ranking four times deeper. `rrf` is defined on each ranking's exact top `window`, as search engines define it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Literal

import numpy as np

SearchMode = Literal["dense", "lexical", "hybrid"]
FusionMethod = Literal["weighted", "rrf"]
Normalise = Literal["query", "language"]
Ranked = Sequence[tuple[str, float]]  # (document id, score), best first


@dataclass(frozen=True)
class Fusion:
    method: FusionMethod = "weighted"
    weight: float = 0.055  # weighted: the lexical score's weight against the cosine (the service's default)
    rrf_k: int = 60
    window: int = 100  # rrf: the depth of each ranking that counts; weighted: the first fetch
    # weighted: BM25 divided by the query's best over all documents, or by its best in each document's language
    # (so that no language's documents are lifted as a whole: measured in evaluation, bench.lexical)
    normalise: Normalise = "language"

    def __post_init__(self) -> None:
        if self.method not in ("weighted", "rrf"):
            raise ValueError(f"unknown fusion method {self.method!r} (weighted, rrf)")
        if self.normalise not in ("query", "language"):
            raise ValueError(f"unknown normalisation {self.normalise!r} (query, language)")
        if self.weight < 0 or self.rrf_k < 1 or self.window < 1:
            raise ValueError("fusion needs weight >= 0, rrf_k >= 1 and window >= 1")


@dataclass(frozen=True)
class FusedHit:
    ext_id: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # ranking -> 1-based rank, for the rankings that found it


def _ranks(ranked: Ranked) -> dict[str, int]:
    return {ext_id: rank for rank, (ext_id, _) in enumerate(ranked, start=1)}


def _kth(scored: dict[str, float], k: int) -> float:
    """The k-th best score (-inf when fewer are scored)."""
    return heapq.nlargest(k, scored.values())[-1] if len(scored) >= k else -math.inf


def _top(scored: dict[str, float], k: int) -> list[tuple[str, float]]:
    """Best first; ties by id, so a result never depends on the order candidates were met in."""
    if len(scored) > k:  # only the k best and whatever ties the last of them are sorted
        least = _kth(scored, k)
        scored = {ext_id: score for ext_id, score in scored.items() if score >= least}
    return sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:k]


def fuse_rrf(dense: Ranked, lexical: Ranked, k: int, fusion: Fusion) -> list[FusedHit]:
    """RRF over the two rankings as given (each the exact top `window` among the filtered documents)."""
    dense_ranks, lexical_ranks = _ranks(dense[: fusion.window]), _ranks(lexical[: fusion.window])
    scored: dict[str, float] = {}
    for ranks in (dense_ranks, lexical_ranks):
        for ext_id, rank in ranks.items():
            scored[ext_id] = scored.get(ext_id, 0.0) + 1.0 / (fusion.rrf_k + rank)
    return [_hit(ext_id, score, dense_ranks, lexical_ranks) for ext_id, score in _top(scored, k)]


def _hit(ext_id: str, score: float, dense_ranks: dict[str, int], lexical_ranks: dict[str, int]) -> FusedHit:
    ranks = {name: table[ext_id] for name, table in (("dense", dense_ranks), ("lexical", lexical_ranks))
             if ext_id in table}
    return FusedHit(ext_id, score, ranks)


def weighted_scores(dense: dict[str, float], lexical: dict[str, float], weight: float) -> dict[str, float]:
    """cosine + weight × normalised BM25, for every document in `dense` (absent from `lexical`: 0)."""
    return {ext_id: score + weight * lexical.get(ext_id, 0.0) for ext_id, score in dense.items()}


def least_reaching(dense_scores: Sequence[float], k: int, weight: float) -> float:
    """The lowest cosine of a dense candidate whose BM25 weighted fusion needs (best first): a candidate's fused
    score is at most its cosine + `weight` (the normalised BM25 is at most 1 among the filtered documents), and
    the k-th fused score is at least the k-th cosine (BM25 only adds), so a candidate whose cosine falls short of
    that by more than the weight cannot reach the top k, whatever its BM25."""
    return float(dense_scores[k - 1]) - weight if len(dense_scores) >= k else -math.inf


def fuse_weighted(
    k: int,
    fusion: Fusion,
    dense_top: Callable[[int], Ranked],
    lexical_top: Callable[[int], Ranked],
    dense_of: Callable[[Sequence[str]], dict[str, float]],
    lexical_of: Callable[[Sequence[str]], dict[str, float]],
    lexical_floor: Callable[[int], float] | None = None,
) -> list[FusedHit]:
    """The exact top-k of the weighted fusion among the filtered documents, which the four callables see:
    each ranking's top n (the lexical one in any order), and each side's score of given documents (dense_of:
    every document it is asked about that passes the filter; lexical_of: those that match a query term). The
    lexical side's scores come normalised, in [0, 1] (xling.models.index.lexical.ScaledLexical).
    `lexical_floor(n)`: a bound on the lexical score of every document `lexical_top(n)` left out, when the
    lexical side knows a tighter one than the last score it returned (it may then return more than n). Only
    the documents that may reach the top k are scored on both sides (least_reaching)."""
    if k <= 0:
        return []
    depth = max(k, fusion.window)
    # The lexical ranking is fetched once: deepening it costs a stored-document read per hit and language, while
    # a deeper dense fetch is one more scan. Only the dense floor then falls from round to round, which suffices:
    # once the dense side is exhausted, every filtered document has been seen.
    lexical = list(lexical_top(depth))
    if lexical_floor is not None:
        unseen_lexical = lexical_floor(depth)
    else:  # an unseen document scores at most the last one returned, or 0 when fewer than asked exist
        unseen_lexical = min((score for _, score in lexical), default=0.0) if len(lexical) == depth else 0.0
    ranked_lexical = dict(lexical)
    known_lexical: dict[str, float] = dict(ranked_lexical)
    asked_lexical: set[str] = set(known_lexical)  # asked, whether or not a term matched (no answer: 0)
    # The cosine of every document seen that may reach the top k (least_reaching): only those are fused.
    contenders: dict[str, float] = {}
    asked_dense: set[str] = set()
    while True:
        dense = list(dense_top(depth))
        asked_dense.update(ext_id for ext_id, _ in dense)
        least = least_reaching([score for _, score in dense[:k]], k, fusion.weight)
        reaching = [(ext_id, score) for ext_id, score in dense if score >= least]
        contenders.update(reaching)
        missing_lexical = [ext_id for ext_id, _ in reaching if ext_id not in asked_lexical]
        known_lexical.update(lexical_of(missing_lexical) if missing_lexical else {})
        asked_lexical.update(missing_lexical)
        exhausted = len(dense) < depth  # the dense side returned every filtered document: nothing is unseen
        if not exhausted:
            # A lexical candidate outside the dense ranking has a cosine of at most the dense floor: its cosine is
            # asked for only if that could lift it to the k-th fused score among the documents already scored.
            # (Once the dense side is exhausted, such a candidate does not pass the filter.)
            reach = _kth(weighted_scores(contenders, known_lexical, fusion.weight), k)
            wanted = [ext_id for ext_id, score in lexical
                      if ext_id not in asked_dense and dense[-1][1] + fusion.weight * score >= reach]
            if wanted:
                contenders.update((ext_id, score) for ext_id, score in dense_of(wanted).items() if score >= least)
                asked_dense.update(wanted)
        top = _top(weighted_scores(contenders, known_lexical, fusion.weight), k)
        if exhausted:
            break
        # An unseen document has a cosine of at most the dense floor and a BM25 of at most the lexical floor.
        bound = weighted_scores({"": dense[-1][1]}, {"": unseen_lexical}, fusion.weight)[""]
        if len(top) == k and top[-1][1] > bound:
            break
        depth *= 4
    dense_ranks = _ranks(dense)
    lexical_ranks = _ranks_of(lexical, ranked_lexical, [ext_id for ext_id, _ in top])
    return [_hit(ext_id, score, dense_ranks, lexical_ranks) for ext_id, score in top]


def _ranks_of(ranking: Ranked, scores: dict[str, float], ext_ids: Sequence[str]) -> dict[str, int]:
    """The 1-based rank of each of these ids that `ranking` holds (`scores`: the ranking as a dict), the ranking
    given in any order and read best first, ties by id: only the hits a fusion returns are ranked."""
    held = [ext_id for ext_id in ext_ids if ext_id in scores]
    if not held:
        return {}
    values = np.fromiter(map(itemgetter(1), ranking), dtype=np.float64, count=len(ranking))
    ranks = {}
    for ext_id in held:
        score = scores[ext_id]
        tied = np.flatnonzero(values == score)  # itself included
        before = sum(1 for at in tied.tolist() if ranking[at][0] < ext_id) if len(tied) > 1 else 0
        ranks[ext_id] = 1 + int(np.count_nonzero(values > score)) + before
    return ranks

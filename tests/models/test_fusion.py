"""Fusion of a dense and a lexical ranking: exact top-k against brute force over the filtered documents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from xling.models.index.fusion import Fusion, fuse_rrf, fuse_weighted


def _world(seed: int, size: int = 400) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Documents with a cosine each, a BM25 for the third of them a query term reaches, and a filter."""
    rng = np.random.default_rng(seed)
    ids = [f"d{i:03d}" for i in range(size)]
    cosine = rng.uniform(-0.2, 0.9, size)
    bm25 = np.where(rng.random(size) < 0.33, rng.gamma(2.0, 3.0, size), 0.0)
    keep = rng.random(size) < 0.6
    return ids, cosine, bm25, keep


def _ranking(
    ids: list[str], scores: np.ndarray, keep: np.ndarray, depth: int, positive: bool
) -> list[tuple[str, float]]:
    order = sorted((i for i in range(len(ids)) if keep[i] and (scores[i] > 0 or not positive)),
                   key=lambda i: (-scores[i], ids[i]))
    return [(ids[i], float(scores[i])) for i in order[:depth]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("weight", [0.05, 0.3, 2.0])
def test_weighted_fusion_with_a_filter_equals_brute_force(seed: int, weight: float) -> None:
    ids, cosine, bm25, keep = _world(seed)
    asked: list[int] = []

    def dense_top(depth: int) -> list[tuple[str, float]]:
        asked.append(depth)
        return _ranking(ids, cosine, keep, depth, positive=False)

    def dense_of(wanted: Sequence[str]) -> dict[str, float]:
        return {d: float(cosine[ids.index(d)]) for d in wanted if keep[ids.index(d)]}

    best = bm25[keep].max()  # the lexical side comes normalised by the best among the filtered documents
    scaled = bm25 / best

    def lexical_of(wanted: Sequence[str]) -> dict[str, float]:
        return {d: float(scaled[ids.index(d)]) for d in wanted if keep[ids.index(d)] and bm25[ids.index(d)] > 0}

    fusion = Fusion("weighted", weight=weight, window=10)
    lexical_ranking = _ranking(ids, scaled, keep, 10, positive=True)
    hits = fuse_weighted(  # the lexical ranking may come in any order: fusion ranks the hits it returns itself
        10, fusion, dense_top, lambda depth: _ranking(ids, scaled, keep, depth, positive=True)[::-1], dense_of,
        lexical_of,
    )
    fused = cosine + weight * scaled
    expected = sorted((i for i in range(len(ids)) if keep[i]), key=lambda i: (-fused[i], ids[i]))[:10]
    assert [hit.ext_id for hit in hits] == [ids[i] for i in expected]
    assert [hit.score for hit in hits] == pytest.approx([fused[i] for i in expected])
    if weight == 2.0:
        assert len(asked) > 1  # a heavy lexical weight needed a deeper dense fetch: the loop was exercised
    # Each hit says which rankings found it and where: its place in the lexical ranking read best first.
    lexical_ranks = {ext_id: rank for rank, (ext_id, _) in enumerate(lexical_ranking, start=1)}
    dense_ranks = {ext_id: rank for rank, (ext_id, _) in enumerate(dense_top(len(ids)), start=1)}
    for hit in hits:
        assert hit.ranks.get("lexical") == lexical_ranks.get(hit.ext_id)
        assert hit.ranks.get("dense", dense_ranks[hit.ext_id]) == dense_ranks[hit.ext_id]
    if weight == 2.0:
        assert any("lexical" in hit.ranks for hit in hits)  # the ranks of the lexical side were checked


def test_lexical_ranks_break_ties_by_id_whatever_order_the_ranking_came_in() -> None:
    lexical = [("e", 0.5), ("b", 1.0), ("d", 0.5), ("a", 1.0), ("c", 0.7)]  # a, b tie at 1.0; d, e at 0.5
    dense = [("x", 0.95), ("e", 0.1), ("d", 0.05), ("a", 0.0), ("b", 0.0), ("c", 0.0)]
    cosine, bm25 = dict(dense), dict(lexical)
    hits = fuse_weighted(
        5, Fusion("weighted", weight=1.0, window=5), lambda depth: dense[:depth], lambda depth: lexical,
        lambda wanted: {d: cosine[d] for d in wanted}, lambda wanted: {d: bm25[d] for d in wanted if d in bm25},
    )
    # fused: a 1.0, b 1.0, x 0.95, c 0.7, e 0.6 (d 0.55 is sixth); lexical ranks read best first, ties by id
    assert [(hit.ext_id, hit.ranks.get("lexical")) for hit in hits] == [
        ("a", 1), ("b", 2), ("x", None), ("c", 3), ("e", 5)
    ]


def test_rrf_sums_reciprocal_ranks_within_the_window() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    lexical = [("c", 12.0), ("d", 4.0), ("a", 1.0)]
    hits = fuse_rrf(dense, lexical, 4, Fusion("rrf", rrf_k=60, window=2))
    expected = {"a": 1 / 61, "b": 1 / 62, "c": 1 / 61, "d": 1 / 62}  # window 2: c's dense rank 3 does not count
    assert [(h.ext_id, h.score) for h in hits] == [(i, pytest.approx(expected[i])) for i in ("a", "c", "b", "d")]
    assert hits[0].ranks == {"dense": 1} and hits[1].ranks == {"lexical": 1}


def test_fusion_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fusion"):
        Fusion("max")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fusion("weighted", weight=-1)

"""Bitext retrieval accuracy@1 in both directions (Tatoeba-style; see `xling.models.data.bitext` for loading).

For each direction, every source line retrieves among all target lines; accuracy@1 is the share
whose own translation ranks first. Ties are pessimistic: a translation tied with another line counts
as a miss. The margin is how far, on average, the own translation scores above the best other line (negative
when another line wins): it keeps moving after accuracy@1 saturates on a few hundred easy pairs, so a choice
between two models with the same accuracy can still be made on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xling.models.centering import center
from xling.models.data.bitext import BitextPair
from xling.models.encoder import EncodeFn
from xling.models.evaluation.modes import Rescore, RetrievalMode, bm25_matrix, rescorer


@dataclass(frozen=True)
class DirectionScore:
    accuracy: float  # accuracy@1
    margin: float  # mean of (own translation's score − best other line's score)


def score_direction(queries: np.ndarray, targets: np.ndarray, rescore: Rescore | None = None) -> DirectionScore:
    """Rows i against targets: accuracy@1 (target i strictly above every other) and the mean margin.
    `rescore(rows, cosines)` turns the cosines into the scores that rank (lexical or fused retrieval)."""
    scores = queries @ targets.T
    if rescore is not None:
        scores = rescore(np.arange(len(scores)), scores)
    if len(scores) < 2:
        return DirectionScore(1.0, 0.0)
    own = np.diag(scores)
    others = scores.copy()
    np.fill_diagonal(others, -np.inf)
    best_other = others.max(axis=1)
    return DirectionScore(float(np.mean(own > best_other)), float(np.mean(own - best_other)))


def accuracy_at_1(queries: np.ndarray, targets: np.ndarray, rescore: Rescore | None = None) -> float:
    """Share of rows i whose target i scores strictly above every other target."""
    return score_direction(queries, targets, rescore).accuracy


def _pair_row(pair: BitextPair, forward: DirectionScore, backward: DirectionScore, min_lines: int) -> dict[str, Any]:
    return {
        "pair": pair.name,
        "src": pair.src,
        "tgt": pair.tgt,
        "lines": len(pair.src_lines),
        f"{pair.src}->{pair.tgt}": forward.accuracy,
        f"{pair.tgt}->{pair.src}": backward.accuracy,
        "mean": (forward.accuracy + backward.accuracy) / 2,
        "margin": (forward.margin + backward.margin) / 2,
        "flagged": len(pair.src_lines) < min_lines,
    }


def _centred_side(queries: np.ndarray, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One language's query and passage vectors, each centred on the mean of that language's passages (the
    pair's own lines are the calibration corpus, as a served corpus would be)."""
    mean = passages.mean(axis=0, dtype=np.float64).astype(np.float32)
    lang = ["x"] * len(passages)
    return center(queries, lang, {"x": mean}), center(passages, lang, {"x": mean})


def bitext_metrics(
    pairs: list[BitextPair],
    encode: EncodeFn,
    min_lines: int = 100,
    centering: bool = False,
    mode: RetrievalMode | None = None,
) -> dict[str, Any]:
    """accuracy@1 per pair in both directions, and the macro average over both directions of all pairs; with
    `centering`, the same under "centred", every vector centred on its language's passage mean. `mode`:
    lexical or fused retrieval instead of dense (models/evaluation/modes.py)."""
    mode = mode or RetrievalMode()
    rows: list[dict[str, Any]] = []
    centred_rows: list[dict[str, Any]] = []
    for pair in pairs:
        src_langs, tgt_langs = [pair.src] * len(pair.src_lines), [pair.tgt] * len(pair.tgt_lines)
        src_q, tgt_p = encode(pair.src_lines, "query", src_langs), encode(pair.tgt_lines, "passage", tgt_langs)
        tgt_q, src_p = encode(pair.tgt_lines, "query", tgt_langs), encode(pair.src_lines, "passage", src_langs)
        forward, backward = _rescorers(pair, mode)
        rows.append(_pair_row(pair, score_direction(src_q, tgt_p, forward), score_direction(tgt_q, src_p, backward),
                              min_lines))
        if centering:
            (src_qc, src_pc), (tgt_qc, tgt_pc) = _centred_side(src_q, src_p), _centred_side(tgt_q, tgt_p)
            centred_rows.append(_pair_row(
                pair, score_direction(src_qc, tgt_pc, forward), score_direction(tgt_qc, src_pc, backward), min_lines
            ))
    result: dict[str, Any] = {
        **_macro(rows),
        "pairs": rows,
        "min_lines": min_lines,
        "tie_policy": "pessimistic",
    }
    if centering:
        result["centred"] = {**_macro(centred_rows), "pairs": centred_rows}
    if mode.mode != "dense":
        result["retrieval"] = mode.label
    return result


def _macro(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {"bitext_acc@1": float(np.mean([r["mean"] for r in rows])),
            "bitext_margin": float(np.mean([r["margin"] for r in rows]))}


def _rescorers(pair: BitextPair, mode: RetrievalMode) -> tuple[Rescore | None, Rescore | None]:
    """Each direction's rescoring: the BM25 of one side's lines against the other side's, in its language."""
    if mode.mode == "dense":
        return None, None
    forward = bm25_matrix(pair.src_lines, [(line, pair.tgt) for line in pair.tgt_lines])
    backward = bm25_matrix(pair.tgt_lines, [(line, pair.src) for line in pair.src_lines])
    return rescorer(mode, forward), rescorer(mode, backward)

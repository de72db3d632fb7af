"""LAReQA evaluation (Roy et al. 2020; as used by arXiv 2408.10536): mono / cross / multi mAP and language bias.

Candidates are every sentence of every paragraph in every language. A question (id, language X) has
one relevant candidate per language holding that id: the sentence containing its answer.

- AP(q) = (1/|R_q|) Σ_k P@k · 1[c_k ∈ R_q] over the full ranking (no cut-off).
- Mono  = macro over X of mAP(queries in X -> candidates in X).
- Cross = macro over ordered pairs X != Y of mAP(queries in X -> candidates in Y); a query whose id
  has no answer in Y is skipped for that pair, and a pair with no such query at all is left out.
- Multi = macro over X of mAP(queries in X -> all candidates).
- Rank distance = in the Multi ranking, max - min rank of a query's relevant candidates; mean over
  queries with two or more relevant candidates, macro over X; lower = less language bias.
- R@1 / R@10: for Mono and Cross, whether the one relevant candidate ranks within k; for Multi, the
  share of the query's relevant candidates within the top k. Macro-averaged like the mAPs.

Ties are broken pessimistically: a relevant candidate ranks after every non-relevant candidate with
the same score, and relevant candidates tied with each other keep the order of their languages.
A result therefore never benefits from ties (a constant encoder scores near zero, not near one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xling.models.data.lareqa import LareqaData

PRIMARY_METRIC = "multi_map"


@dataclass
class LareqaResult:
    metrics: dict[str, float]
    pair_map: dict[str, dict[str, float]]  # pair_map[X][Y] = mAP(X -> Y); the diagonal is Mono
    per_language: dict[str, dict[str, float]]
    primary_metric: str = PRIMARY_METRIC
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary_metric": self.primary_metric,
            "metrics": self.metrics,
            "pair_map": self.pair_map,
            "per_language": self.per_language,
            **self.details,
        }


def multi_average_precision(relevant_ranks: np.ndarray) -> float:
    """AP from the 1-based ranks of all relevant items in one ranking: mean over k of k / rank_k."""
    ranks = np.sort(np.asarray(relevant_ranks, dtype=np.float64))
    if ranks.size == 0:
        raise ValueError("AP needs at least one relevant item")
    return float(np.mean(np.arange(1, ranks.size + 1) / ranks))


def _pessimistic_ranks(scores: np.ndarray, candidate_ids: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks of each row's relevant candidates among `candidate_ids` (-1 relevant -> 0).

    scores: (n, N) for all candidates; candidate_ids: the columns this ranking is over;
    relevant: (n, m) candidate index per relevant slot, -1 for none.
    """
    sub = scores[:, candidate_ids]
    present = relevant >= 0
    rows = np.arange(scores.shape[0])[:, None]
    values = np.where(present, scores[rows, np.maximum(relevant, 0)], np.inf)  # (n, m)
    # candidates scoring >= each relevant value: every non-relevant tie goes first (pessimistic)
    at_or_above = (sub[:, None, :] >= values[:, :, None]).sum(axis=2) if sub.shape[1] else np.zeros_like(values)
    in_ranking = present & np.isin(relevant, candidate_ids)
    # relevant ones among them: remove, then add back those strictly above or tied and listed earlier
    rel_vals = np.where(in_ranking, values, -np.inf)
    rel_at_or_above = (rel_vals[:, None, :] >= values[:, :, None]).sum(axis=2)
    slot = np.arange(relevant.shape[1])
    strictly_above = rel_vals[:, None, :] > values[:, :, None]
    tied_earlier = (rel_vals[:, None, :] == values[:, :, None]) & (slot[None, None, :] <= slot[None, :, None])
    rel_before = (strictly_above | tied_earlier).sum(axis=2)
    ranks = at_or_above - rel_at_or_above + rel_before
    return np.where(in_ranking, ranks, 0)


def lareqa_metrics(
    data: LareqaData,
    query_vectors: np.ndarray,
    candidate_vectors: np.ndarray,
    chunk: int = 256,
    rescore: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> LareqaResult:
    """Every setting from one (chunk x N) score matrix at a time; memory O(chunk x N). `rescore(rows, cosines)`
    turns a chunk's cosines into the scores that rank (lexical or fused retrieval: models/evaluation/modes.py)."""
    assert query_vectors.shape[0] == len(data.question_texts), query_vectors.shape
    assert candidate_vectors.shape[0] == len(data.candidate_texts), candidate_vectors.shape
    n_langs = len(data.languages)
    by_lang = [np.flatnonzero(data.candidate_langs == li) for li in range(n_langs)]
    all_ids = np.arange(len(data.candidate_texts))
    ap_sums = np.zeros((n_langs, n_langs))  # [X, Y] sum of AP(X -> Y)
    ap_counts = np.zeros((n_langs, n_langs))
    hits = {k: np.zeros((n_langs, n_langs)) for k in (1, 10)}
    multi: dict[str, list[list[float]]] = {"ap": [[] for _ in range(n_langs)], "dist": [[] for _ in range(n_langs)]}
    multi_recall: dict[int, list[list[float]]] = {k: [[] for _ in range(n_langs)] for k in (1, 10)}

    for x in range(n_langs):
        rows_x = np.flatnonzero(data.question_langs == x)
        for start in range(0, rows_x.size, chunk):
            rows = rows_x[start : start + chunk]
            scores = query_vectors[rows] @ candidate_vectors.T  # (n, N)
            if rescore is not None:
                scores = rescore(rows, scores)
            relevant = data.relevant[rows]  # (n, L)
            for y in range(n_langs):
                single = relevant[:, y : y + 1]
                ranks = _pessimistic_ranks(scores, by_lang[y], single)[:, 0]
                scored = single[:, 0] >= 0
                ap_sums[x, y] += np.sum(1.0 / ranks[scored])
                ap_counts[x, y] += scored.sum()
                for k in hits:
                    hits[k][x, y] += np.sum(ranks[scored] <= k)
            ranks_all = _pessimistic_ranks(scores, all_ids, relevant)  # (n, L), 0 where absent
            for row_ranks in ranks_all:
                found = row_ranks[row_ranks > 0]
                multi["ap"][x].append(multi_average_precision(found))
                if found.size >= 2:
                    multi["dist"][x].append(float(found.max() - found.min()))
                for k in multi_recall:
                    multi_recall[k][x].append(float(np.mean(found <= k)))

    with np.errstate(invalid="ignore", divide="ignore"):
        pair = ap_sums / ap_counts
        hit_rate = {k: v / ap_counts for k, v in hits.items()}
    diagonal = np.eye(n_langs, dtype=bool)
    cross_mask = ~diagonal & (ap_counts > 0)
    langs = data.languages

    def macro(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    metrics = {
        "mono_map": macro([float(pair[x, x]) for x in range(n_langs) if ap_counts[x, x]]),
        "cross_map": float(pair[cross_mask].mean()) if cross_mask.any() else float("nan"),
        "multi_map": macro([float(np.mean(a)) for a in multi["ap"] if a]),
        "rank_distance": macro([float(np.mean(d)) for d in multi["dist"] if d]),
    }
    for k in (1, 10):
        metrics[f"mono_r@{k}"] = macro([float(hit_rate[k][x, x]) for x in range(n_langs) if ap_counts[x, x]])
        metrics[f"cross_r@{k}"] = float(hit_rate[k][cross_mask].mean()) if cross_mask.any() else float("nan")
        metrics[f"multi_r@{k}"] = macro([float(np.mean(r)) for r in multi_recall[k] if r])
    pair_map = {
        langs[x]: {langs[y]: float(pair[x, y]) for y in range(n_langs) if ap_counts[x, y]} for x in range(n_langs)
    }
    per_language: dict[str, dict[str, float]] = defaultdict(dict)
    for x in range(n_langs):
        cross_row = [float(pair[x, y]) for y in range(n_langs) if cross_mask[x, y]]
        per_language[langs[x]] = {
            "questions": float(np.sum(data.question_langs == x)),
            "mono_map": float(pair[x, x]) if ap_counts[x, x] else float("nan"),
            "cross_map_from": macro(cross_row),
            "multi_map": macro(multi["ap"][x]),
            "rank_distance": macro(multi["dist"][x]),
        }
    details = {"cross_pairs": int(cross_mask.sum()), "tie_policy": "pessimistic"}
    return LareqaResult(metrics, pair_map, dict(per_language), details=details)

"""LAReQA scores for lexical and fused retrieval, as the service computes them (xling.models.index).

The candidates go into a real lexical index (each in its language's partition, as a served corpus would);
every question's BM25 against every candidate is read back once into a (questions x candidates) matrix, and
each mode turns a chunk of cosines into the scores that rank:
- `lexical`: BM25 alone (candidates no term reaches score 0 and tie last);
- `hybrid` weighted: cosine + weight x BM25 / the question's best BM25;
- `hybrid` rrf: 1 / (k + dense rank) + 1 / (k + lexical rank), each counted within its first `window`.
Over the full candidate set these are the exact rankings the service's fusion returns top-k of.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xling.models.data.lareqa import LareqaData
from xling.models.index.fusion import Fusion, SearchMode
from xling.models.index.lexical import LexicalDoc, LexicalIndex

Rescore = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RetrievalMode:
    mode: SearchMode = "dense"
    fusion: Fusion | None = None  # hybrid only

    @property
    def label(self) -> str:
        if self.mode != "hybrid":
            return self.mode
        assert self.fusion is not None
        if self.fusion.method == "rrf":
            return f"hybrid rrf k{self.fusion.rrf_k} window {self.fusion.window}"
        per = ", per language" if self.fusion.normalise == "language" else ""
        return f"hybrid weighted {self.fusion.weight:g}{per}"


def bm25_matrix(queries: Sequence[str], candidates: Sequence[tuple[str, str | None]]) -> np.ndarray:
    """(queries, candidates) BM25 of each query against each (text, language) candidate, the candidates held in
    a real lexical index in a scratch folder; 0 where no term matches."""
    with tempfile.TemporaryDirectory(prefix="xling-lexical-") as scratch:
        index = LexicalIndex(Path(scratch))
        index.upsert([LexicalDoc(str(column), text, lang) for column, (text, lang) in enumerate(candidates)])
        index.commit(None)
        matrix = np.zeros((len(queries), len(candidates)), dtype=np.float32)
        seen: dict[str, int] = {}  # a query text asked again is looked up once
        for row, text in enumerate(queries):
            if text in seen:
                matrix[row] = matrix[seen[text]]
                continue
            seen[text] = row
            for hit in index.search(text, len(candidates)):
                matrix[row, int(hit.ext_id)] = hit.score
        index.close()
    return matrix


def lexical_matrix(data: LareqaData) -> np.ndarray:
    """A LAReQA set's (questions, candidates) BM25, every candidate in its language's partition."""
    langs = [data.languages[i] for i in data.candidate_langs]
    return bm25_matrix(data.question_texts, list(zip(data.candidate_texts, langs, strict=True)))


def rescorer(mode: RetrievalMode, bm25: np.ndarray | None, column_langs: np.ndarray | None = None) -> Rescore | None:
    """What turns a chunk's cosines into the mode's scores (None: dense, the cosines themselves). `column_langs`:
    each candidate's language, which per-language normalisation needs."""
    if mode.mode == "dense":
        return None
    assert bm25 is not None, "lexical and hybrid modes need the BM25 matrix"
    if mode.mode == "lexical":
        return lambda rows, cosines: bm25[rows]
    fusion = mode.fusion
    assert fusion is not None
    if fusion.method == "weighted":
        if fusion.normalise == "language":
            if column_langs is None:
                raise ValueError("per-language normalisation needs the candidates' languages")
            groups = [np.flatnonzero(column_langs == lang) for lang in np.unique(column_langs)]
            return lambda rows, cosines: weighted(cosines, bm25[rows], fusion.weight, groups)
        return lambda rows, cosines: weighted(cosines, bm25[rows], fusion.weight)
    return lambda rows, cosines: rrf(cosines, bm25[rows], fusion.rrf_k, fusion.window)


def weighted(
    cosines: np.ndarray, bm25: np.ndarray, weight: float, groups: list[np.ndarray] | None = None
) -> np.ndarray:
    """cosine + weight x BM25 / best BM25, the best taken per row over all columns, or within each group of
    columns (each language's candidates) when `groups` are given."""
    fused: np.ndarray = cosines.astype(np.float64, copy=True)
    for columns in groups if groups is not None else [np.arange(bm25.shape[1])]:
        part = bm25[:, columns]
        best = part.max(axis=1, keepdims=True)
        fused[:, columns] += np.divide(weight * part, best, out=np.zeros_like(part, dtype=np.float64), where=best > 0)
    return fused


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every column in each row, best first (ties in column order, as a stable sort gives)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def rrf(cosines: np.ndarray, bm25: np.ndarray, k: int, window: int) -> np.ndarray:
    dense_ranks, lexical_ranks = _ranks(cosines), _ranks(bm25)
    fused = np.where(dense_ranks <= window, 1.0 / (k + dense_ranks), 0.0)
    counted = (lexical_ranks <= window) & (bm25 > 0)  # no term matched: not in the lexical ranking at all
    return fused + np.where(counted, 1.0 / (k + lexical_ranks), 0.0)

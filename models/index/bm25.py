"""BM25 over sparse matrices, one language partition at a time, so that a batch of queries is scored in one
sparse product per partition and a candidate's score is a lookup in that product, not another search.

BM25(q, d) = Σ_{t ∈ q} IDF(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl)),
IDF(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)), with N, n_t and avgdl over the partition's live documents and
k1, b as tantivy (and Lucene) set them. |d| is stored as tantivy stores it, on one byte (exact up to 40, then on
a log scale, rounded down), so that the scores are the ones the tantivy index this replaces gave.

A partition keeps each document's term counts (what changes) and builds, when a search follows a write, the
terms × documents matrix of the second factor and the IDF of every term (what depends on the whole partition):
writes stay O(document), and the rebuild is one vectorised pass over the partition's postings. A removed
document's row stays, marked dead, until dead rows outnumber live ones; then the rows are renumbered.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from xling.models.index.slots import Scalar, filter_key

K1, B = 1.2, 0.75  # tantivy's BM25 parameters


def _decode_norm(code: int) -> int:
    """The length a one-byte field norm decodes to: codes below 24 are the length itself; above, three mantissa
    bits and an exponent (the Lucene scheme, tantivy's src/fieldnorm)."""
    if code < 24:
        return code
    rest = code - 24
    mantissa, shift = rest & 0b111, rest >> 3
    return 24 + (mantissa if shift == 0 else (mantissa | 8) << (shift - 1))


_NORMS = np.asarray([_decode_norm(code) for code in range(256)], dtype=np.int64)


def quantised_lengths(lengths: np.ndarray) -> np.ndarray:
    """Document lengths as tantivy's BM25 sees them: each rounded down to the value its one-byte norm decodes to."""
    return _NORMS[np.searchsorted(_NORMS, lengths, side="right") - 1].astype(np.float32)


@dataclass(frozen=True)
class StoredTerms:
    """What a partition keeps of one document: enough to score it, filter it and write it out again."""

    ext_id: str
    lang: str | None  # as declared: what a `langs` filter matches
    metadata: dict[str, Scalar]
    counts: dict[str, int]  # analysed term -> occurrences


class _Growing:
    """A numpy array appended to in amortised O(1)."""

    def __init__(self, dtype: type) -> None:
        self.data: np.ndarray = np.zeros(64, dtype=dtype)
        self.size = 0

    def append(self, value: object) -> None:
        if self.size == len(self.data):
            self.data = np.concatenate([self.data, np.zeros_like(self.data)])
        self.data[self.size] = value
        self.size += 1

    @classmethod
    def holding(cls, values: np.ndarray) -> _Growing:
        grown = cls(values.dtype.type)
        grown.data = np.concatenate([values, np.zeros(max(64, len(values)), dtype=values.dtype)])
        grown.size = len(values)
        return grown

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]


class Bm25Partition:
    """One language's documents. Not thread-safe: its owner (xling.models.index.lexical.LexicalIndex) locks."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.langs: list[str | None] = []
        self.metadata: list[dict[str, Scalar]] = []
        self._filters: dict[str, list[int]] = {}  # "lang\x1f<declared>" or a metadata filter key -> rows
        self._alive = _Growing(bool)
        self._lengths = _Growing(np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, terms, counts) not yet merged
        self._postings = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        self._matrix: sp.csr_matrix | None = None  # terms x rows: BM25's second factor; None: stale
        self.id_array = np.zeros(0, dtype=object)  # `ids` as an array, as of the last build (a search's lookups)
        self._idf = np.zeros(0, np.float32)

    def __len__(self) -> int:
        return len(self.row_of)

    # Writes -------------------------------------------------------------------------------------
    def add(self, doc: StoredTerms) -> None:
        """Store a document whose id this partition does not hold (remove it first)."""
        row = len(self.ids)
        self.ids.append(doc.ext_id)
        self.row_of[doc.ext_id] = row
        self.langs.append(doc.lang)
        self.metadata.append(dict(doc.metadata))
        for key in self._filter_keys(doc.lang, doc.metadata):
            self._filters.setdefault(key, []).append(row)
        self._alive.append(True)
        self._lengths.append(sum(doc.counts.values()))
        cols = np.fromiter((self.vocabulary.setdefault(t, len(self.vocabulary)) for t in doc.counts), np.int64,
                           count=len(doc.counts))
        counts = np.fromiter(doc.counts.values(), np.float32, count=len(doc.counts))
        self._pending.append((np.full(len(cols), row, np.int64), cols, counts))
        self._matrix = None

    def remove(self, ext_id: str) -> bool:
        row = self.row_of.pop(ext_id, None)
        if row is None:
            return False
        self._alive.data[row] = False
        self._matrix = None
        return True

    @staticmethod
    def _filter_keys(lang: str | None, metadata: dict[str, Scalar]) -> list[str]:
        return [f"lang\x1f{lang or ''}", *(filter_key(key, value) for key, value in metadata.items())]

    # Reads --------------------------------------------------------------------------------------
    def documents(self) -> Iterator[StoredTerms]:
        """The live documents, with their term counts (what a journal compaction writes)."""
        rows, cols, counts = self._merged()
        names = list(self.vocabulary)
        order = np.argsort(rows, kind="stable")
        rows, cols, counts = rows[order], cols[order], counts[order]
        starts = np.searchsorted(rows, np.arange(len(self.ids) + 1))
        for ext_id, row in self.row_of.items():
            span = slice(starts[row], starts[row + 1])
            terms = {names[c]: int(n) for c, n in zip(cols[span], counts[span], strict=True)}
            yield StoredTerms(ext_id, self.langs[row], self.metadata[row], terms)

    def mask(self, langs: Sequence[str] | None, where: dict[str, Scalar] | None) -> np.ndarray | None:
        """The rows passing a filter (None: no filter)."""
        if not langs and not where:
            return None
        rows = len(self.ids)
        allowed = np.ones(rows, dtype=bool)
        if langs:
            declared = np.zeros(rows, dtype=bool)
            for lang in langs:
                declared[self._filters.get(f"lang\x1f{lang}", [])] = True
            allowed &= declared
        for key, value in (where or {}).items():
            having = np.zeros(rows, dtype=bool)
            having[self._filters.get(filter_key(key, value), [])] = True
            allowed &= having
        return allowed

    def score(self, queries: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """queries × rows: each query's BM25 for every live document one of its terms reaches (its distinct
        terms, as given); nothing stored for the others."""
        matrix, idf = self._built()
        rows, cols = [], []
        for row, terms in enumerate(queries):
            for term in terms:
                col = self.vocabulary.get(term)
                if col is not None and col < len(idf) and idf[col] > 0:
                    rows.append(row)
                    cols.append(col)
        weights = sp.csr_matrix((idf[cols], (rows, cols)), shape=(len(queries), matrix.shape[0]), dtype=np.float32)
        return (weights @ matrix).tocsr()

    def _built(self) -> tuple[sp.csr_matrix, np.ndarray]:
        if self._matrix is None:
            self._rebuild()
        assert self._matrix is not None
        return self._matrix, self._idf

    def _merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every posting (row, term, count), dead rows' included until a compaction drops them."""
        if self._pending:
            self._postings = tuple(  # type: ignore[assignment]
                np.concatenate([held, *(chunk[i] for chunk in self._pending)])
                for i, held in enumerate(self._postings)
            )
            self._pending = []
        return self._postings

    def _rebuild(self) -> None:
        if len(self.ids) - len(self.row_of) > max(len(self.row_of), 1_024):
            self._compact()
        rows, cols, counts = self._merged()
        self.id_array = np.asarray(self.ids, dtype=object)
        alive, lengths = self._alive.view, self._lengths.view
        live = alive[rows]
        rows, cols, counts = rows[live], cols[live], counts[live]
        documents = int(alive.sum())
        average = float(lengths[alive].sum()) / documents if documents else 1.0
        norm = K1 * (1 - B + B * quantised_lengths(lengths)[rows] / max(average, 1e-9))
        values = counts * (K1 + 1) / (counts + norm)
        terms = len(self.vocabulary)
        self._matrix = sp.csr_matrix((values.astype(np.float32), (cols, rows)), shape=(terms, len(self.ids)))
        df = np.bincount(cols, minlength=terms).astype(np.float64)
        self._idf = np.where(df > 0, np.log(1 + (documents - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32)

    def _compact(self) -> None:
        """Renumber the live rows from 0, dropping the dead ones and their postings, and the terms only dead rows
        held: under replacing writes the words seen keep changing, and a vocabulary that only grew would hold every
        word ever written."""
        alive = self._alive.view.copy()
        new_row = np.cumsum(alive) - 1
        rows, cols, counts = self._merged()
        keep = alive[rows]
        used = np.unique(cols[keep])
        new_col = np.full(len(self.vocabulary), -1, np.int64)
        new_col[used] = np.arange(len(used))
        names = list(self.vocabulary)
        self.vocabulary = {names[col]: i for i, col in enumerate(used.tolist())}
        self._postings = (new_row[rows[keep]], new_col[cols[keep]], counts[keep])
        kept = np.flatnonzero(alive)
        self.ids = [self.ids[r] for r in kept]
        self.langs = [self.langs[r] for r in kept]
        self.metadata = [self.metadata[r] for r in kept]
        self.row_of = {ext_id: row for row, ext_id in enumerate(self.ids)}
        self._filters = {}
        for row, (lang, metadata) in enumerate(zip(self.langs, self.metadata, strict=True)):
            for key in self._filter_keys(lang, metadata):
                self._filters.setdefault(key, []).append(row)
        self._alive = _Growing.holding(np.ones(len(kept), dtype=bool))
        self._lengths = _Growing.holding(self._lengths.view[kept])


def top_of_row(scores: sp.csr_matrix, row: int, depth: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the `depth` best entries of one query's row among the rows `mask` allows, unordered."""
    start, end = scores.indptr[row], scores.indptr[row + 1]
    found, values = scores.indices[start:end], scores.data[start:end]
    if mask is not None:
        allowed = mask[found]
        found, values = found[allowed], values[allowed]
    if len(values) > depth:
        best = np.argpartition(-values, depth - 1)[:depth]
        found, values = found[best], values[best]
    return found, values


def gather_row(scores: sp.csr_matrix, row: int, rows: np.ndarray) -> np.ndarray:
    """One query's scores of these document rows (0 where no term reached one)."""
    start, end = scores.indptr[row], scores.indptr[row + 1]
    dense = np.zeros(scores.shape[1], dtype=np.float32)
    dense[scores.indices[start:end]] = scores.data[start:end]
    return np.asarray(dense[rows])

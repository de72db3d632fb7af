"""BM25 as sparse vectors, for an engine that scores them server-side (Qdrant's sparse vectors with the IDF
modifier), so that lexical retrieval works past one machine as the index in each replica works on one.

BM25(q, d) = Σ_{t ∈ q} IDF(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl)).
A document's vector holds the second factor for each of its terms; the query's holds 1 for each of its terms;
the engine multiplies by IDF(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)) from its own counts, which Qdrant can
take over a filtered corpus (one language's documents). Terms are those of the lexical index
(`analysis.terms`: ICU words, folded, stemmed where the language has a stemmer), each namespaced by its
language, so a word shared by two languages counts separately in each, as in the per-language replica
partitions. Term ids are 32-bit hashes of "<language>\x1f<term>": a collision merges two terms' counts, with
odds of about n² / 2³³ among n distinct terms.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from xling.models.index.analysis import base_language, terms
from xling.models.index.bm25 import K1, B  # the replica index's: the two rankings differ only in their statistics
from xling.models.index.lexical import LexicalDoc, partition_of


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def term_id(lang: str | None, term: str) -> int:
    digest = hashlib.blake2b(f"{base_language(lang) or ''}\x1f{term}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def document_length(text: str, lang: str | None) -> int:
    return len(terms(text, lang))


def document_vector(text: str, lang: str | None, avgdl: float) -> SparseVector:
    """The BM25 term-frequency part of each of the document's terms (`avgdl`: its language's mean length)."""
    return _term_frequencies(terms(text, lang), lang, avgdl)


def _term_frequencies(analysed: list[str], lang: str | None, avgdl: float) -> SparseVector:
    counts = Counter(term_id(lang, term) for term in analysed)
    norm = K1 * (1 - B + B * len(analysed) / max(avgdl, 1e-9))
    indices = sorted(counts)
    return SparseVector(indices, [counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices])


def query_vector(text: str, lang: str | None) -> SparseVector:
    """Each distinct term of the query, analysed for `lang`, once (a repeated query word counts once, as in
    tantivy's BM25)."""
    indices = sorted({term_id(lang, term) for term in terms(text, lang)})
    return SparseVector(indices, [1.0] * len(indices))


class LengthTally(Protocol):
    """Documents and terms per partition of one index, kept by its one writer (state/qdrant_store.py keeps it in
    Redis, so a writer that takes over carries on from it). The writer reads it before a write and adds the
    write's changes once the write is stored, so a write that fails and is retried counts once."""

    def totals(self, parts: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(documents, terms) of each of these partitions (0, 0 for one never seen)."""
        ...

    def add(self, changes: dict[str, tuple[int, int]]) -> None: ...


class MemoryLengths:
    """A tally in this process (tests, benchmarks)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[int, int]] = {}

    def totals(self, parts: Sequence[str]) -> dict[str, tuple[int, int]]:
        return {part: self.held.get(part, (0, 0)) for part in parts}

    def add(self, changes: dict[str, tuple[int, int]]) -> None:
        for part, (docs, length) in changes.items():
            held_docs, held_length = self.held.get(part, (0, 0))
            self.held[part] = (held_docs + docs, held_length + length)


@dataclass(frozen=True)
class SparseDoc:
    """What a document carries for BM25: its partition and length, and its sparse vector."""

    part: str
    length: int
    vector: SparseVector


Changes = dict[str, tuple[int, int]]  # partition -> (documents, terms) to add to its tally


def sparse_documents(
    docs: Sequence[LexicalDoc], previous: dict[str, tuple[str, int]], lengths: LengthTally
) -> tuple[list[SparseDoc], Changes]:
    """The sparse side of an upsert, each document in the partition the replica index would put it in (its
    language's, analysed as that language), and the tally changes to add once it is stored. `previous`: the
    (partition, length) each replaced id held, which leaves the tally; the batch's own lengths count in the mean
    its documents are written with."""
    parts = [partition_of(doc) for doc in docs]
    analysed = [terms(doc.text, part) for doc, part in zip(docs, parts, strict=True)]  # once per document
    sizes = [len(words) for words in analysed]
    changes = _changes(previous.values(), zip(parts, sizes, strict=True))
    held = lengths.totals(list(changes))
    means = {}
    for part, (docs_, terms_) in changes.items():
        total_docs, total_terms = held[part][0] + docs_, held[part][1] + terms_
        if total_docs > 0 and total_terms > 0:
            means[part] = total_terms / total_docs
        else:  # a tally that lost count (a writer died between a write and its tally): this batch's own mean
            own = [size for p, size in zip(parts, sizes, strict=True) if p == part]
            means[part] = sum(own) / len(own) if own else 1.0
    sparse = [
        SparseDoc(part, len(words), _term_frequencies(words, part, means[part]))
        for part, words in zip(parts, analysed, strict=True)
    ]
    return sparse, changes


def leaving(previous: dict[str, tuple[str, int]]) -> Changes:
    """The tally changes of deleting documents that held these (partition, length)s."""
    return _changes(previous.values(), [])


def _changes(leaving: Iterable[tuple[str, int]], arriving: Iterable[tuple[str, int]]) -> Changes:
    changes: dict[str, tuple[int, int]] = defaultdict(lambda: (0, 0))
    for sign, items in ((-1, leaving), (1, arriving)):
        for part, size in items:
            docs, length = changes[part]
            changes[part] = (docs + sign, length + sign * size)
    return dict(changes)

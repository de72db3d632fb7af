"""BM25 as sparse vectors, for an engine that scores them server-side (Qdrant's sparse vectors with the IDF
modifier), so that lexical retrieval works past one machine as the tantivy index works on one.

BM25(q, d) = Σ_{t ∈ q} IDF(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl)).
A document's vector holds the second factor for each of its terms; the query's holds 1 for each of its terms;
the engine multiplies by IDF(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)) from its own counts, which Qdrant can
take over a filtered corpus (one language's documents). Terms are those of the lexical index
(`analysis.terms`: ICU words, folded, stemmed where the language has a stemmer), each namespaced by its
language, so a word shared by two languages counts separately in each, as in the per-language tantivy
partitions. Term ids are 32-bit hashes of "<language>\x1f<term>": a collision merges two terms' counts, with
odds of about n² / 2³³ among n distinct terms.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from xling.models.index.analysis import base_language, terms

K1, B = 1.2, 0.75  # tantivy's BM25 parameters, so the two rankings differ only where the statistics do


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
    counts = Counter(term_id(lang, term) for term in terms(text, lang))
    norm = K1 * (1 - B + B * sum(counts.values()) / max(avgdl, 1e-9))
    indices = sorted(counts)
    return SparseVector(indices, [counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices])


def query_vector(text: str, lang: str | None) -> SparseVector:
    """Each distinct term of the query, analysed for `lang`, once (a repeated query word counts once, as in
    tantivy's BM25)."""
    indices = sorted({term_id(lang, term) for term in terms(text, lang)})
    return SparseVector(indices, [1.0] * len(indices))

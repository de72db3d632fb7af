"""Per-language centring: remove the share of a multilingual embedding that says which language a text is in.

A multilingual encoder places each language's texts around a language-specific offset. Subtracting the mean
vector of a language's documents from each of them, and from each query in that language, then normalising
again, removes most of that offset; what is left ranks by meaning across languages. (Measured on XQuAD-R
with multilingual-e5-small: bench/RESULTS.md.)

The means are estimated from a calibration corpus: the documents a service holds, or in evaluation the
candidate pool of the set being scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from xling.models.encoder import EncodeFn
from xling.models.files import write_json_atomic


def language_means(vectors: np.ndarray, langs: Sequence[str], min_count: int = 1) -> dict[str, np.ndarray]:
    """The mean vector of each language with at least `min_count` rows (float32, not normalised)."""
    assert vectors.ndim == 2 and len(vectors) == len(langs), (vectors.shape, len(langs))
    labels = np.asarray(langs)
    means: dict[str, np.ndarray] = {}
    for lang in sorted(set(langs)):
        rows = vectors[labels == lang]
        if len(rows) >= min_count:
            means[lang] = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
    return means


def center(
    vectors: np.ndarray, langs: Sequence[str], means: dict[str, np.ndarray], fallback: np.ndarray | None = None
) -> np.ndarray:
    """Each row minus its language's mean (or `fallback` for a language without one), normalised again.

    A language with neither a mean nor a fallback is left as it is."""
    assert vectors.ndim == 2 and len(vectors) == len(langs), (vectors.shape, len(langs))
    offsets = np.zeros_like(vectors)
    for row, lang in enumerate(langs):
        mean = means.get(lang, fallback)
        if mean is not None:
            offsets[row] = mean
    centred = vectors - offsets
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    normalised: np.ndarray = (centred / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


CENTERING_FILE = "centering.json"


@dataclass(frozen=True)
class Centering:
    """The per-language means a model version serves with: documents are centred on their language's mean
    (`fallback` for a language without one), queries on their language's document mean when the language is
    known, else on `query_mean`. Identified by a hash of its numbers: an index built with one set of means is
    only ever searched with queries centred by the same set."""

    model_version: str
    means: dict[str, np.ndarray]  # language -> mean of its calibration documents (raw, not normalised)
    counts: dict[str, int]  # language -> calibration documents behind its mean
    fallback: np.ndarray  # documents of a language without a mean: the average of the language means
    query_mean: np.ndarray  # queries of unknown language: the calibration documents encoded as queries
    corpus_fingerprint: str
    min_count: int
    calibrated_at: float = 0.0  # unix time
    corpus_size: int = 0  # documents in the corpus when calibrated (the sample is at most this)

    @cached_property
    def id(self) -> str:  # hashed once: searches, snapshots and the swap watcher ask for it often
        digest = hashlib.sha256(self.model_version.encode())
        for lang in sorted(self.means):
            digest.update(lang.encode() + b"\0" + self.means[lang].astype("<f4").tobytes())
        digest.update(self.fallback.astype("<f4").tobytes() + self.query_mean.astype("<f4").tobytes())
        return digest.hexdigest()[:12]

    @property
    def languages(self) -> list[str]:
        return sorted(self.means)

    def documents(self, vectors: np.ndarray, langs: Sequence[str | None]) -> np.ndarray:
        return center(vectors, [lang or "" for lang in langs], self.means, self.fallback)

    def raw_documents(self, centred: np.ndarray, langs: Sequence[str | None]) -> np.ndarray:
        """The inverse of `documents`: the encoder's unit vectors back from their centred rows. A centred row c is
        (r - m) / |r - m| for a unit r and its language's mean m, so r = m + t c with t > 0 the root of
        |m + t c| = 1: t = -(m.c) + sqrt((m.c)^2 + 1 - |m|^2) (|m| < 1, a mean of unit vectors). New means can
        then be applied to an index without encoding its documents again."""
        if not len(langs):
            return centred.copy()
        means = np.stack([self.means.get(lang or "", self.fallback) for lang in langs])
        dot = np.einsum("ij,ij->i", means.astype(np.float64), centred.astype(np.float64))
        norms = np.einsum("ij,ij->i", means.astype(np.float64), means.astype(np.float64))
        scale = -dot + np.sqrt(np.maximum(dot * dot + 1.0 - norms, 0.0))
        raw = means + scale[:, None] * centred
        unit: np.ndarray = (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        return unit

    def queries(self, vectors: np.ndarray, langs: Sequence[str | None]) -> np.ndarray:
        """Each query on its language's document mean when it has one, else on the global query mean."""
        return center(vectors, [lang or "" for lang in langs], self.means, self.query_mean)

    def to_dict(self) -> dict[str, Any]:
        def floats(vector: np.ndarray) -> list[float]:
            return [float(x) for x in vector.astype(np.float32)]

        return {
            "id": self.id,
            "model_version": self.model_version,
            "calibrated_at": self.calibrated_at,
            "corpus_size": self.corpus_size,
            "corpus_fingerprint": self.corpus_fingerprint,
            "min_count": self.min_count,
            "counts": dict(sorted(self.counts.items())),
            "means": {lang: floats(self.means[lang]) for lang in sorted(self.means)},
            "fallback": floats(self.fallback),
            "query_mean": floats(self.query_mean),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Centering:
        def array(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float32)

        centering = cls(
            model_version=str(data["model_version"]),
            means={lang: array(values) for lang, values in data["means"].items()},
            counts={lang: int(n) for lang, n in data["counts"].items()},
            fallback=array(data["fallback"]),
            query_mean=array(data["query_mean"]),
            corpus_fingerprint=str(data["corpus_fingerprint"]),
            min_count=int(data["min_count"]),
            calibrated_at=float(data.get("calibrated_at", 0.0)),
            corpus_size=int(data.get("corpus_size", 0)),
        )
        if data.get("id") not in (None, centering.id):
            raise ValueError(f"centring file says id {data['id']}, its numbers hash to {centering.id}")
        return centering

    def save(self, folder: Path) -> Path:
        """Write `folder/centering.json` atomically (replacing any earlier means); returns its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CENTERING_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Path) -> Centering | None:
        path = folder / CENTERING_FILE
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def fingerprint_sample(items: Sequence[tuple[str, str, str]]) -> str:
    """A hash of (doc id, language, text) triples: which documents a calibration saw."""
    digest = hashlib.sha256()
    for doc_id, lang, text in sorted(items):
        digest.update(f"{doc_id}\0{lang}\0".encode() + hashlib.sha256(text.encode()).digest())
    return "sha256:" + digest.hexdigest()[:16]


def calibrate(
    encode: EncodeFn,
    sample: Sequence[tuple[str, str, str]],
    *,
    model_version: str,
    min_count: int,
    corpus_size: int | None = None,
    now: float | None = None,
    passages: np.ndarray | None = None,
    queries_per_lang: int | None = None,
) -> Centering:
    """Means from a calibration sample of (doc id, language, text): each language with at least `min_count`
    documents gets the mean of their passage vectors; the fallback is the average of those means (each
    language weighs the same); the query mean is the same texts encoded as queries, averaged per language first.
    `passages`: the sample's passage vectors when they are at hand (an index holds them), so only the queries are
    encoded; `queries_per_lang`: the query mean from at most this many texts of each language (it serves only
    queries whose language is unknown, and costs as much encoding as the passages).
    """
    texts = [text for _, _, text in sample]
    langs = [lang for _, lang, _ in sample]
    if passages is None:
        passages = encode(texts, "passage", langs)
    means = language_means(passages, langs, min_count)
    if not means:
        raise ValueError(f"no language has {min_count} calibration documents (got {len(sample)} documents)")
    taken: dict[str, int] = {}
    kept = []
    for i, lang in enumerate(langs):
        if lang in means and (queries_per_lang is None or taken.get(lang, 0) < queries_per_lang):
            taken[lang] = taken.get(lang, 0) + 1
            kept.append(i)
    kept_langs = [langs[i] for i in kept]
    query_means = language_means(encode([texts[i] for i in kept], "query", kept_langs), kept_langs)
    counts = {lang: langs.count(lang) for lang in means}
    return Centering(
        model_version=model_version,
        means=means,
        counts=counts,
        fallback=np.mean(np.stack([means[lang] for lang in sorted(means)]), axis=0).astype(np.float32),
        query_mean=np.mean(np.stack([query_means[lang] for lang in sorted(query_means)]), axis=0).astype(np.float32),
        corpus_fingerprint=fingerprint_sample(sample),
        min_count=min_count,
        calibrated_at=time.time() if now is None else now,
        corpus_size=len(sample) if corpus_size is None else corpus_size,
    )

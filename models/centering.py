"""Per-language centring: remove the share of a multilingual embedding that says which language a text is in.

A multilingual encoder places each language's texts around a language-specific offset. Subtracting the mean
vector of a language's documents from each of them, and from each query in that language, then normalising
again, removes most of that offset; what is left ranks by meaning across languages. (Measured on XQuAD-R
with multilingual-e5-small: bench/RESULTS.md.)

The means are estimated from a calibration corpus: the documents a service holds, or in evaluation the
candidate pool of the set being scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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

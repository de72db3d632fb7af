"""The means an adapter version derives from its parent's: only the adapted languages' move."""

from __future__ import annotations

from typing import Any

import numpy as np

from xling.models.centering import Centering
from xling.worker.adapter_reindex import derived_means


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_only_the_changed_languages_get_new_means(make_settings: Any) -> None:
    settings = make_settings(centering_min_docs=3, centering_sample_per_lang=4)
    rng = np.random.default_rng(0)
    parent = Centering(
        model_version="parent", means={"en": rng.standard_normal(8).astype(np.float32),
                                       "de": rng.standard_normal(8).astype(np.float32)},
        counts={"en": 10, "de": 10}, fallback=rng.standard_normal(8).astype(np.float32),
        query_mean=rng.standard_normal(8).astype(np.float32), corpus_fingerprint="sha256:x", min_count=3,
    )
    raw = unit(rng.standard_normal((7, 8)))
    langs: list[str | None] = ["kzj"] * 5 + ["cor"] * 2  # cor: too few documents for a mean of its own
    child = derived_means(parent, "child", {"kzj", "cor", "de"}, raw, langs, settings)
    assert child is not None and child.model_version == "child"
    assert sorted(child.means) == ["en", "kzj"]  # de changed and has no documents here: it falls to the fallback
    np.testing.assert_array_equal(child.means["en"], parent.means["en"])
    np.testing.assert_allclose(child.means["kzj"], raw[:4].mean(axis=0), atol=1e-6)  # the first 4 (sample_per_lang)
    assert child.counts == {"en": 10, "kzj": 4}
    np.testing.assert_array_equal(child.fallback, parent.fallback)
    np.testing.assert_array_equal(child.query_mean, parent.query_mean)
    assert child.id != parent.id
    assert derived_means(None, "child", {"kzj"}, raw, langs, settings) is None

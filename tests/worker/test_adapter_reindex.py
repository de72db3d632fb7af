"""An adapter version built on its parent: the parent's adapters kept, only the adapted languages' means move."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.adapted_model import INVENTED
from tests.tiny_model import CORPUS
from xling.models.adapters.bundle import adapter_folder, adapter_records
from xling.models.adapters.versions import write_version_with_adapters
from xling.models.centering import Centering
from xling.models.encoder import Encoder
from xling.state.centering import centering_folder, derived_means, means_for_build
from xling.state.docstore import StoredDoc
from xling.worker.adapter_reindex import changed_languages


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
    assert child.model_version == "child"
    assert sorted(child.means) == ["en", "kzj"]  # de changed and has no documents here: it falls to the fallback
    np.testing.assert_array_equal(child.means["en"], parent.means["en"])
    np.testing.assert_allclose(child.means["kzj"], raw[:4].mean(axis=0), atol=1e-6)  # the first 4 (sample_per_lang)
    assert child.counts == {"en": 10, "kzj": 4}
    np.testing.assert_array_equal(child.fallback, parent.fallback)
    np.testing.assert_array_equal(child.query_mean, parent.query_mean)
    assert child.id != parent.id


def test_adding_a_language_keeps_the_parents_adapters(adapter_version: Path, tmp_path: Path) -> None:
    adapted = adapter_version
    """A version built on one with adapters keeps them byte for byte; only the new language routes anew."""
    record = {**adapter_records(adapted)["xqz"], "path": "adapters/abc"}
    child_folder = tmp_path / "tiny-xqz-abc"
    manifest = write_version_with_adapters(adapted, child_folder, {"abc": (adapter_folder(adapted, "xqz"), record)},
                                           version="tiny-xqz-abc", parent_version="tiny-xqz")
    assert sorted(manifest.adapters) == ["abc", "xqz"] and manifest.parent_version == "tiny-xqz"
    parent, child = Encoder(adapted, version="tiny-xqz"), Encoder(child_folder, version="tiny-xqz-abc")
    assert changed_languages(parent, child) == {"abc"}
    texts = INVENTED[:6] + CORPUS["de"][:3]
    langs = ["xqz"] * 6 + ["de"] * 3
    assert child.encode(texts, "passage", langs).tobytes() == parent.encode(texts, "passage", langs).tobytes()
    # The new language has its own adapter (here a copy of xqz's weights, so the same vectors as xqz's).
    np.testing.assert_array_equal(child.encode(INVENTED[:6], "passage", ["abc"] * 6),
                                  parent.encode(INVENTED[:6], "passage", ["xqz"] * 6))
    with pytest.raises(FileExistsError):
        write_version_with_adapters(adapted, child_folder, {}, version="again", parent_version="tiny-xqz")


class ListCorpus:
    """A Corpus over a list, for the means a build calibrates."""

    def __init__(self, docs: list[tuple[str, StoredDoc]]) -> None:
        self.docs = docs

    def start_offset(self) -> str:
        return "0-0"

    def iter_all(self, chunk: int = 1_000) -> Iterator[list[tuple[str, StoredDoc]]]:
        yield from (self.docs[i : i + chunk] for i in range(0, len(self.docs), chunk))

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDoc]:
        return {doc_id: doc for doc_id, doc in self.docs if doc_id in ids}

    def count(self) -> int:
        return len(self.docs)


def test_an_adapter_versions_first_means_are_its_parents_but_for_its_language(
    adapter_version: Path, make_settings: Any
) -> None:
    """On any tier (Qdrant builds the whole index anew): a fresh calibration would give every language a new mean
    from the corpus as it is now; the adapter version keeps the parent's for every other language."""
    settings = make_settings(centering_min_docs=3)
    docs = [(f"x{i}", StoredDoc(text, "xqz")) for i, text in enumerate(INVENTED[:8])]
    docs += [(f"d{i}", StoredDoc(text, "de")) for i, text in enumerate(CORPUS["de"][:6])]
    rng = np.random.default_rng(1)
    dim = Encoder(adapter_version, version="tiny-xqz").dim
    planted = {lang: rng.standard_normal(dim).astype(np.float32) for lang in ("de", "en", "xqz")}
    # The parent's means, as if calibrated on an earlier corpus: none of them is what this corpus would give.
    parent = Centering(model_version="tiny-base", means=dict(planted), counts={"de": 50, "en": 50, "xqz": 50},
                       fallback=rng.standard_normal(dim).astype(np.float32),
                       query_mean=rng.standard_normal(dim).astype(np.float32), corpus_fingerprint="sha256:p",
                       min_count=3)
    parent.save(centering_folder(settings, "tiny-base"))
    child = Encoder(adapter_version, version="tiny-xqz")
    means = means_for_build(ListCorpus(docs), child, settings)
    assert means is not None and means.model_version == "tiny-xqz"
    np.testing.assert_array_equal(means.means["de"], planted["de"])
    np.testing.assert_array_equal(means.means["en"], planted["en"])  # no documents now: still the parent's
    np.testing.assert_array_equal(means.fallback, parent.fallback)
    np.testing.assert_array_equal(means.query_mean, parent.query_mean)
    adapted = child.encode([doc.text for _, doc in docs[:8]], "passage", ["xqz"] * 8)
    np.testing.assert_allclose(means.means["xqz"], adapted.mean(axis=0), atol=1e-6)
    assert means.counts["xqz"] == 8
    # Frozen like any means: the next build of the version reads them back.
    again = means_for_build(ListCorpus(docs[:3]), child, settings)
    assert again is not None and again.id == means.id

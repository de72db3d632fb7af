"""New means applied to the vectors an index holds give the index that encoding the documents afresh with those
means would give; means calibrated from the stored vectors equal means calibrated by encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import DictCorpus, corpus
from xling.models.centering import Centering, calibrate
from xling.models.encoder import Encoder
from xling.models.index.slots import DocEntry, IndexSpec
from xling.models.index.vector_index import VectorIndex
from xling.serving.recentring import calibrate_from_index, copy_index, recentred
from xling.state.centering import document_languages
from xling.state.docstore import StoredDoc
from xling.state.indexing import ServingPair
from xling.state.settings import Settings

SPEC = IndexSpec()


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder(tiny_model, version="tiny", device="cpu")


@pytest.fixture(scope="module")
def documents() -> DictCorpus:
    docs = corpus(8)
    # A quarter without a language: they are centred on the one detected from their text.
    return DictCorpus({d["id"]: StoredDoc(d["text"], None if i % 4 == 0 else d["lang"]) for i, d in enumerate(docs)})


def built(encoder: Encoder, documents: DictCorpus, centering: Centering | None) -> ServingPair:
    """What a build encodes: every document, centred on `centering` when given."""
    pair = ServingPair(encoder, VectorIndex(encoder.dim, encoder.version, SPEC), "5-0", centering)
    ids = list(documents.docs)
    pair.store(ids, [documents.docs[i] for i in ids])
    return pair


def means_of(encoder: Encoder, documents: DictCorpus, ids: list[str]) -> Centering:
    docs = [documents.docs[i] for i in ids]
    langs = document_languages(docs, encoder.detector)
    sample = [(i, lang or "", d.text) for i, d, lang in zip(ids, docs, langs, strict=True)]
    return calibrate(encoder.encode, sample, model_version=encoder.version, min_count=2)


def vectors_by_id(pair: ServingPair) -> dict[str, np.ndarray]:
    assert isinstance(pair.index, VectorIndex)
    return {entry.ext_id: vector for entries, vectors in pair.index.export() for entry, vector in
            zip(entries, vectors, strict=True)}


def test_means_applied_to_stored_vectors_equal_a_fresh_encode(encoder: Encoder, documents: DictCorpus) -> None:
    ids = list(documents.docs)
    first, second = means_of(encoder, documents, ids[::2]), means_of(encoder, documents, ids[1::3])
    assert first.id != second.id
    for before, after in ((None, first), (first, second)):  # raw -> centred, then centred -> other means
        pair = built(encoder, documents, before)
        assert isinstance(pair.index, VectorIndex)
        moved = recentred(pair, copy_index(pair.index, pair.applied_offset), after, documents, SPEC)
        fresh = built(encoder, documents, after)
        assert moved.applied_offset == "5-0" and moved.centering is after
        got, want = vectors_by_id(moved), vectors_by_id(fresh)
        assert set(got) == set(want) and len(got) == len(ids)
        assert max(float(np.abs(got[i] - want[i]).max()) for i in ids) < 1e-5
    assert moved.index.documents()[0] == DocEntry(ids[0], None, {})  # entries kept as they were


def test_means_calibrated_from_the_index_equal_means_calibrated_by_encoding(
    encoder: Encoder, documents: DictCorpus, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, centering_min_docs=2)  # type: ignore[call-arg]
    for served in (None, means_of(encoder, documents, list(documents.docs)[::3])):  # a raw index, a centred one
        pair = built(encoder, documents, served)
        assert isinstance(pair.index, VectorIndex)
        from_index = calibrate_from_index(pair, pair.index, documents, settings)
        encoded = means_of(encoder, documents, list(documents.docs))
        assert from_index is not None and from_index.languages == encoded.languages
        for lang in encoded.languages:
            np.testing.assert_allclose(from_index.means[lang], encoded.means[lang], atol=1e-5)
        np.testing.assert_allclose(from_index.query_mean, encoded.query_mean, atol=1e-5)  # 8 per language < 64

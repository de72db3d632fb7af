"""New centring means for an index this process holds, from the vectors it already holds: no document is
encoded again.

An index stores each document's unit passage vector, centred on its language's mean (or raw, before the first
means). The raw vector comes back exactly from a centred one and its mean (`Centering.raw_documents`), so:
- the means of a calibration come from the sampled documents' stored vectors; only the query mean, which
  serves queries of unknown language, is encoded, from a few texts per language;
- the index under the new means is its vectors un-centred and centred again.
On a slow machine this is what makes centred search reachable in bounded time: the work is a pass over the
corpus's ids and texts and a copy of the vectors, not an encode of the corpus (measured in bench/RESULTS.md).
Where the index lives elsewhere (Qdrant) a recalibration job encodes the corpus instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from xling.models.centering import Centering
from xling.models.index.slots import DocEntry, IndexSpec
from xling.models.index.vector_index import VectorIndex
from xling.state.centering import CalibrationProgress, calibrate_sample, document_languages, sample_corpus
from xling.state.docstore import Corpus, StoredDoc
from xling.state.indexing import ServingPair
from xling.state.settings import Settings

log = logging.getLogger(__name__)

# Texts per language encoded as queries for the query mean (the full sample would cost as much encoding as the
# passages; the query mean only serves queries whose language is unknown).
QUERIES_PER_LANG = 64


@dataclass(frozen=True)
class IndexCopy:
    """Every document of an index with its stored vector, and the log offset they reflect (taken together,
    while nothing is applied)."""

    entries: list[DocEntry]
    vectors: np.ndarray
    offset: str


def copy_index(index: VectorIndex, offset: str) -> IndexCopy:
    """Call with the applier paused (its lock held), so that the copy and `offset` agree."""
    entries: list[DocEntry] = []
    blocks: list[np.ndarray] = []
    for part, vectors in index.export():
        entries += part
        blocks.append(vectors)
    return IndexCopy(entries, np.concatenate(blocks) if blocks else np.zeros((0, index.dim), np.float32), offset)


def centring_languages(entries: list[DocEntry], corpus: Corpus, pair: ServingPair) -> list[str | None]:
    """The language each document was (and will be) centred on: its own, else the one detected from its text,
    as when it was encoded (`ServingPair.document_vectors`)."""
    langs: list[str | None] = [entry.lang for entry in entries]
    undeclared = [i for i, lang in enumerate(langs) if lang is None]
    if undeclared:
        found = corpus.get_many([entries[i].ext_id for i in undeclared])
        docs = [found.get(entries[i].ext_id) or StoredDoc("") for i in undeclared]
        for i, lang in zip(undeclared, document_languages(docs, pair.encoder.detector), strict=True):
            langs[i] = lang
    return langs


def recentred(pair: ServingPair, copy: IndexCopy, centering: Centering, corpus: Corpus, spec: IndexSpec
              ) -> ServingPair:
    """`pair`'s version under `centering`: the copied vectors un-centred from the pair's means (if any) and
    centred on the new ones, in a new index at the copy's offset."""
    langs = centring_languages(copy.entries, corpus, pair)
    raw = pair.centering.raw_documents(copy.vectors, langs) if pair.centering is not None else copy.vectors
    index = VectorIndex(pair.encoder.dim, pair.encoder.version, spec)
    step = 8_192
    for start in range(0, len(copy.entries), step):
        end = start + step
        index.upsert(copy.entries[start:end], centering.documents(raw[start:end], langs[start:end]))
    return ServingPair(pair.encoder, index, copy.offset, centering)


def calibrate_from_index(pair: ServingPair, index: VectorIndex, corpus: Corpus, settings: Settings,
                         progress: CalibrationProgress | None = None) -> Centering | None:
    """Means for the served version from a sample of the corpus whose vectors `index` (the pair's) holds; None
    while no language has `centering_min_docs` of them."""
    sample, total = sample_corpus(corpus, settings.centering_sample_per_lang, pair.encoder.detector,
                                  progress=progress)
    ids, vectors = index.vectors_found([doc_id for doc_id, _, _ in sample])
    held = set(ids)
    sample = [item for item in sample if item[0] in held]  # documents not applied yet are left out
    langs: list[str | None] = [lang for _, lang, _ in sample]
    raw = pair.centering.raw_documents(vectors, langs) if pair.centering is not None else vectors
    return calibrate_sample(sample, total, pair.encoder, settings, progress, passages=raw,
                            queries_per_lang=QUERIES_PER_LANG)

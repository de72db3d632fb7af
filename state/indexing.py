"""Turning Redis documents into index vectors: a full build, and applying doc-log entries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xling.models.centering import Centering
from xling.models.encoder import Encoder
from xling.models.index.vector_index import IndexSpec, VectorIndex
from xling.models.resolve import ModelSource
from xling.state.centering import DriftTracker, document_languages
from xling.state.docstore import DocReader, LogEntry, StoredDoc
from xling.state.settings import Settings


@dataclass
class ServingPair:
    """An encoder with the index it built, the doc-log offset that index has applied, and the means its vectors
    are centred with (None: raw vectors). Queries against the index are centred with the same means."""

    encoder: Encoder
    index: VectorIndex
    applied_offset: str
    centering: Centering | None = None
    drift: DriftTracker = field(default_factory=DriftTracker)  # documents applied since the index was built

    @property
    def version(self) -> str:
        return self.encoder.version

    def document_vectors(self, docs: Sequence[StoredDoc], *, track: bool = False) -> np.ndarray:
        """What the index stores for these documents: passage vectors, centred on their languages' means.
        `track`: count them as written after the means were calibrated (the drift figure)."""
        vectors = self.encoder.encode([doc.text for doc in docs], "passage")
        if self.centering is None:
            return vectors
        langs = document_languages(docs)
        if track:
            self.drift.add(vectors, langs)
        return self.centering.documents(vectors, langs)


def load_encoder(source: ModelSource, settings: Settings) -> Encoder:
    """The one way api, worker and CLI build an encoder, so an index never mixes truncation or batching policies."""
    return Encoder(
        source.path,
        version=source.version,
        device=settings.device,
        max_length=settings.max_seq_length,
        batch_size=settings.encode_batch_size,
        batch_tokens=settings.encode_batch_tokens,
        name_hint=source.name,
        precision=settings.encoder_precision,
    )


def index_spec(settings: Settings) -> IndexSpec:
    return IndexSpec(
        kind=settings.index,
        hnsw_m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
        exact_filter_max=settings.hnsw_exact_filter_max,
    )


def apply_entries(entries: Sequence[LogEntry], reader: DocReader, pair: ServingPair) -> None:
    """Make the index agree with the document hash for every id the entries touch.

    The hash's current state wins over each entry's op, so applying a log twice, or out of a
    snapshot taken mid-stream, converges to the same index (replicas and replays agree).
    """
    if not entries:
        return
    ids = list(dict.fromkeys(e.doc_id for e in entries))
    current = reader.get_many(ids)
    gone = [doc_id for doc_id in ids if doc_id not in current]
    pair.index.remove(gone)
    if current:
        doc_ids = list(current)
        vectors = pair.document_vectors([current[d] for d in doc_ids], track=True)
        pair.index.upsert([current[d].entry(d) for d in doc_ids], vectors)
    pair.applied_offset = entries[-1].offset


def build_index(
    reader: DocReader,
    encoder: Encoder,
    spec: IndexSpec,
    chunk: int = 1_000,
    progress: Callable[[int, int], None] | None = None,
    centering: Centering | None = None,
) -> ServingPair:
    """Encode every document (centred with `centering` when given); the returned pair's offset is where the log
    must be replayed from."""
    # Read the offset first: writes that land during the scan are replayed afterwards (idempotently).
    offset = reader.last_offset()
    pair = ServingPair(encoder, VectorIndex(encoder.dim, encoder.version, spec), offset, centering)
    total, done = reader.count(), 0
    for docs in reader.iter_all(chunk):
        vectors = pair.document_vectors([doc for _, doc in docs])
        pair.index.upsert([doc.entry(doc_id) for doc_id, doc in docs], vectors)
        done += len(docs)
        if progress is not None:
            progress(done, total)
    return pair


def catch_up(reader: DocReader, pair: ServingPair, batch: int) -> int:
    """Apply every log entry after the pair's offset; returns how many were applied."""
    applied = 0
    while entries := reader.read_log(pair.applied_offset, batch):
        apply_entries(entries, reader, pair)
        applied += len(entries)
    return applied

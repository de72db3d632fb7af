"""Turning documents into index vectors: a full build, and applying doc-log entries."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xling.models.centering import Centering
from xling.models.encoder import Encoder
from xling.models.index.lexical import LexicalDoc, LexicalIndex
from xling.models.index.served import ServedIndex
from xling.models.index.vector_index import IndexSpec, VectorIndex
from xling.models.resolve import ModelSource
from xling.state.centering import DriftTracker, document_languages
from xling.state.docstore import Corpus, DocReader, LogEntry, StoredDoc
from xling.state.retention import LogTrimmed
from xling.state.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServingPair:
    """An encoder with the index it built, the doc-log offset that index has applied, and the means its vectors
    are centred with (None: raw vectors). Queries against the index are centred with the same means."""

    encoder: Encoder
    index: ServedIndex
    applied_offset: str
    centering: Centering | None = None
    drift: DriftTracker = field(default_factory=DriftTracker)  # documents applied since the index was built

    @property
    def version(self) -> str:
        return self.encoder.version

    def document_vectors(self, docs: Sequence[StoredDoc], *, track: bool = False) -> np.ndarray:
        """What the index stores for these documents: passage vectors, centred on their languages' means.
        `track`: count them as written after the means were calibrated (the drift figure)."""
        # Each document's language picks its adapter and its mean; no detection when neither needs it.
        langs = document_languages(docs, self.encoder.detector) if self.encoder.adapters or self.centering else None
        vectors = self.encoder.encode([doc.text for doc in docs], "passage", langs)
        if self.centering is None:
            return vectors
        assert langs is not None
        if track:
            self.drift.add(vectors, langs)
        return self.centering.documents(vectors, langs)

    def store(self, ids: Sequence[str], docs: Sequence[StoredDoc], *, track: bool = False) -> None:
        """Encode these documents and upsert them under `ids`; a Qdrant collection keeps their text too (the
        payload that makes it searchable by other clients and readable without Redis)."""
        vectors = self.document_vectors(docs, track=track)
        entries = [doc.entry(doc_id) for doc_id, doc in zip(ids, docs, strict=True)]
        self.index.upsert(entries, vectors, texts=[doc.text for doc in docs])


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
    """How an in-memory index is built (on a tier that keeps no index in memory, only a worker's transient one)."""
    return IndexSpec(
        kind=settings.memory_index_kind,
        hnsw_m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
        exact_filter_max=settings.hnsw_exact_filter_max,
    )


def apply_entries(
    entries: Sequence[LogEntry], reader: DocReader, pair: ServingPair | None, lexical: LexicalIndex | None = None
) -> None:
    """Make the index (and the lexical index, when given) agree with the documents' state for every id the
    entries touch.

    That state is the hash's for an id whose last entry here carries only the id: the hash's current state wins
    over each entry's op. An inline entry (XLING_DOCUMENT_STORE=qdrant) carries the state itself, and the last
    one of an id wins. Either way applying a log twice, or replaying it over a snapshot (or a scroll) taken
    mid-stream, converges to the same index (replicas and replays agree).
    """
    if not entries:
        return
    last = {entry.doc_id: entry for entry in entries}  # dicts keep first-insertion order, values the last entry
    from_hash = reader.get_many([doc_id for doc_id, entry in last.items() if not entry.inline])
    current = {
        doc_id: doc
        for doc_id, entry in last.items()
        if (doc := entry.doc if entry.inline else from_hash.get(doc_id)) is not None
    }
    gone = [doc_id for doc_id in last if doc_id not in current]
    if pair is not None:
        pair.index.remove(gone)
        if current:
            doc_ids = list(current)
            pair.store(doc_ids, [current[d] for d in doc_ids], track=True)
        pair.applied_offset = entries[-1].offset
    if lexical is not None:
        lexical.remove(gone)
        lexical.upsert(lexical_docs(current.items()))
        lexical.commit(entries[-1].offset)


def lexical_docs(docs: Iterable[tuple[str, StoredDoc]]) -> list[LexicalDoc]:
    return [LexicalDoc(doc_id, doc.text, doc.lang, doc.metadata) for doc_id, doc in docs]


def catch_up_lexical(
    reader: DocReader, lexical: LexicalIndex, batch: int, check_log: Callable[[str], None], corpus: Corpus | None = None
) -> int:
    """Bring the lexical index up to the end of the log: replay from its offset, or rebuild it from the
    documents (`corpus`, by default the hash) when it has none or the log no longer reaches back to it. Returns
    the entries replayed."""
    try:
        if lexical.applied_offset is None:
            raise LogTrimmed("the lexical index is new")
        check_log(lexical.applied_offset)
    except LogTrimmed as why:
        log.info("building the lexical index from the documents (%s)", why)
        corpus = corpus or reader
        offset = corpus.start_offset()  # read first: writes during the scan are replayed afterwards
        lexical.clear()
        for docs in corpus.iter_all(2_048):
            lexical.upsert(lexical_docs(docs))
            lexical.commit(None)  # each chunk committed, so an id HSCAN repeats in a later chunk replaces itself
        lexical.commit(offset)
    replayed = 0
    assert lexical.applied_offset is not None
    while entries := reader.read_log(lexical.applied_offset, batch):
        apply_entries(entries, reader, None, lexical)
        replayed += len(entries)
    return replayed


def build_index(
    corpus: Corpus,
    encoder: Encoder,
    spec: IndexSpec,
    chunk: int = 1_000,
    progress: Callable[[int, int], None] | None = None,
    centering: Centering | None = None,
    into: ServedIndex | None = None,
) -> ServingPair:
    """Encode every document (centred with `centering` when given) into a new in-memory index of `spec`, or
    into the empty index `into` (a tier's, such as a new collection); the returned pair's offset is where the log
    must be replayed from."""
    # Read the offset first: writes that land during the scan are replayed afterwards (idempotently).
    offset = corpus.start_offset()
    index = into if into is not None else VectorIndex(encoder.dim, encoder.version, spec)
    pair = ServingPair(encoder, index, offset, centering)
    total, done = corpus.count(), 0
    for docs in corpus.iter_all(chunk):
        pair.store([doc_id for doc_id, _ in docs], [doc for _, doc in docs])
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

"""Where a worker's builds go, one class per index tier (the api's side is serving/tiers.py): the worker encodes
every document into an in-memory index (worker/reindex.py), then publishes it where the apis look. `build_tier`
is the one place that picks; the runner asks the tier what it may do, never which tier it is."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Protocol

import redis

from xling.models.index.vector_index import VectorIndex
from xling.state.centering import snapshot_folder
from xling.state.docstore import Corpus, DocReader
from xling.state.indexing import ServingPair
from xling.state.keys import RedisKeys
from xling.state.settings import Settings

if TYPE_CHECKING:
    from xling.state.qdrant_store import QdrantStore


@contextmanager
def open_corpus(settings: Settings, client: redis.Redis, keys: RedisKeys) -> Iterator[Corpus]:
    """Where a worker reads the documents: the hash, or with XLING_DOCUMENT_STORE=qdrant the serving collection
    of a Qdrant server (the local mode's folder belongs to the api: no worker may read it)."""
    reader = DocReader(client, keys)
    if not settings.documents_in_qdrant:
        yield reader
        return
    if settings.qdrant_local:
        raise RuntimeError("the documents are in the api's Qdrant local-mode folder (XLING_DOCUMENT_STORE=qdrant "
                           "with XLING_QDRANT_PATH), which no worker may open: use a Qdrant server")
    from xling.state.qdrant_store import QdrantStore  # qdrant-client is imported only where it is used

    store = QdrantStore(settings, client, keys)
    try:
        yield store.corpus(reader)
    finally:
        store.close()


class BuildTier(Protocol):
    name: str
    # False: the api builds the index itself when it swaps (Qdrant's local mode: one process owns the folder).
    builds_here: bool
    # False: the documents are where no worker may read them (the api's local-mode folder): no calibration here.
    reads_documents: bool
    # An adapter version may start from its parent's stored index (worker/adapter_reindex.py).
    reuses_parent_index: bool

    def corpus(self, scope: ExitStack) -> Corpus:
        """Where this worker reads every document (closed with `scope`)."""
        ...

    def publish(self, pair: ServingPair, reader: Corpus) -> None:
        """Put the built index where the apis look for it."""
        ...


class SnapshotBuilds:
    """FAISS tiers (flat, hnsw): a snapshot in indexes/<version>/, which each api loads."""

    name = "snapshot"
    builds_here = reads_documents = reuses_parent_index = True

    def __init__(self, settings: Settings, client: redis.Redis, keys: RedisKeys) -> None:
        self.settings, self.client, self.keys = settings, client, keys

    def corpus(self, scope: ExitStack) -> Corpus:
        return DocReader(self.client, self.keys)

    def publish(self, pair: ServingPair, reader: Corpus) -> None:
        assert isinstance(pair.index, VectorIndex)  # the worker's own in-memory build
        pair.index.save(snapshot_folder(self.settings.indexes_dir, pair.version, pair.centering), pair.applied_offset)


class CollectionBuilds(SnapshotBuilds):
    """A Qdrant server: a new collection with each document's text, recorded as the version's current one."""

    name = "qdrant collection"
    reuses_parent_index = False  # a new collection is written whole

    def corpus(self, scope: ExitStack) -> Corpus:
        return scope.enter_context(open_corpus(self.settings, self.client, self.keys))

    def publish(self, pair: ServingPair, reader: Corpus) -> None:
        from xling.state.qdrant_store import QdrantStore as Store  # imports qdrant-client

        store = Store(self.settings, self.client, self.keys)
        try:
            store.record(copy_to_collection(store, pair, reader))
        finally:
            store.close()


class ApiBuilds(SnapshotBuilds):
    """Qdrant's embedded local mode: the api owns the folder and builds the collection when it swaps; with the
    documents in that folder too, it also calibrates the means a build needs."""

    name = "api (qdrant local mode)"
    builds_here = reuses_parent_index = False

    def __init__(self, settings: Settings, client: redis.Redis, keys: RedisKeys) -> None:
        super().__init__(settings, client, keys)
        self.reads_documents = not settings.documents_in_qdrant

    def publish(self, pair: ServingPair, reader: Corpus) -> None:
        raise RuntimeError("in Qdrant's local mode the api builds the collection: a worker publishes nothing")


def copy_to_collection(store: QdrantStore, pair: ServingPair, reader: Corpus, chunk: int = 1_024) -> ServingPair:
    """A worker's in-memory build (worker/reindex.py) copied into a new collection with each document's text:
    the same pair, now on Qdrant. A document deleted since the build is left out; the log replay from the
    pair's offset deletes it anyway."""
    assert isinstance(pair.index, VectorIndex)
    into = store.create(pair.version, pair.encoder.dim, pair.centering)
    for entries, vectors in pair.index.export(chunk):
        docs = reader.get_many([entry.ext_id for entry in entries])
        kept = [row for row, entry in enumerate(entries) if entry.ext_id in docs]
        into.upsert(
            [entries[row] for row in kept], vectors[kept], texts=[docs[entries[row].ext_id].text for row in kept]
        )
    return ServingPair(pair.encoder, into, pair.applied_offset, pair.centering)


def build_tier(settings: Settings, client: redis.Redis, keys: RedisKeys) -> BuildTier:
    """The tier XLING_INDEX (and, for Qdrant, a server URL or a local folder) names."""
    if settings.index != "qdrant":
        return SnapshotBuilds(settings, client, keys)
    if settings.qdrant_local:
        return ApiBuilds(settings, client, keys)
    return CollectionBuilds(settings, client, keys)

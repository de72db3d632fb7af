"""Where a serving pair's index lives, one class per tier behind one interface (`IndexTier`): in this process
(FAISS flat or hnsw, snapshots on disk, the Redis document hash: `LocalTier`), or in Qdrant (a collection per
version and means, an alias, a writer lease, documents of record in the payload where configured: `QdrantTier`).
`make_tier` is the one place that picks; the hot swap, the engine and the documents ask the tier, never which
tier it is."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from xling.models.centering import Centering
from xling.models.encoder import Encoder
from xling.models.index.lexical import LexicalSearch
from xling.models.index.vector_index import SNAPSHOT_META, IndexMismatchError, SnapshotError, VectorIndex
from xling.serving.applier import SharedIndex
from xling.serving.holds import LogHolds
from xling.serving.recentring import IndexCopy, calibrate_from_index, copy_index, recentred
from xling.state.centering import calibrate_corpus, means_for_build, snapshot_folder
from xling.state.docstore import Corpus, DocReader, StoredDoc, offset_key
from xling.state.indexing import ServingPair, build_index, catch_up, index_spec
from xling.state.retention import LogTrimmed
from xling.state.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

    from xling.state.keys import RedisKeys
    from xling.state.qdrant_store import QdrantStore

log = logging.getLogger(__name__)
BUILD_WAIT_S = 1_800.0  # Qdrant: how long a replica waits for another to build or replay a collection


class IndexTier(Protocol):
    def has(self, version: str, centering: Centering | None) -> bool:
        """Whether `version` with these means can serve at once (a snapshot, or a recorded collection)."""
        ...

    def open(self, encoder: Encoder, centering: Centering | None) -> tuple[ServingPair, bool]:
        """The version's index as stored (True), else one built from the documents (False). Pins the offset it
        replays from as "open" in the holds."""
        ...

    def corpus(self) -> Corpus:
        """What a build reads every document from."""
        ...

    def rebuild(self, pair: ServingPair) -> ServingPair:
        """`pair`'s index built again from the documents (the log was trimmed past it); pins "rebuild"."""
        ...

    def replay(self, pair: ServingPair) -> None:
        """Bring `pair` up to the end of the log."""
        ...

    def persist(self, pair: ServingPair) -> None:
        """Make the pair's state survive a restart."""
        ...

    def built(self, pair: ServingPair) -> None:
        """A swap built `pair` from the documents: what a restart needs to find it."""
        ...

    def serve(self, pair: ServingPair) -> None:
        """`pair` now serves (for other clients of the tier too)."""
        ...

    @property
    def calibrates_here(self) -> bool:
        """Whether this api calibrates the served version's means itself, rather than a recalibration job: from
        the vectors its index holds (serving/recentring.py), or where no worker may read the documents."""
        ...

    def calibrate(self, pair: ServingPair) -> Centering | None:
        """New means for the serving pair's version, calibrated in this process (`calibrates_here`); None while
        no language has enough documents."""
        ...

    @property
    def recentres_here(self) -> bool:
        """Whether new means of the serving version are applied to the vectors the index holds (no encoding)."""
        ...

    def copy_for_recentring(self, pair: ServingPair) -> IndexCopy:
        """Every document of the serving pair with its vector and offset (call with the applier paused)."""
        ...

    def recentred(self, pair: ServingPair, copy: IndexCopy, centering: Centering) -> ServingPair:
        """The serving version under new means, from `copy`; built outside any lock."""
        ...

    def replaced(self, pair: ServingPair) -> bool:
        """Whether another replica built a newer index of the serving pair's version (swap to it)."""
        ...

    @property
    def shared(self) -> SharedIndex | None:
        """The index every replica shares and one writes (the applier follows the writer), if so."""
        ...

    def lexical_of(self, pair: ServingPair) -> LexicalSearch | None:
        """Where the tier searches BM25 itself (None: this replica's lexical index, if any)."""
        ...

    @property
    def keeps_documents(self) -> bool:
        """Whether the documents of record live in the tier (else in the Redis hash)."""
        ...

    @property
    def scans_every_vector(self) -> bool:
        """Whether a search reads every vector whatever its depth (flat): a deeper first fetch then costs no
        more scanning (Search fetches hybrid queries' dense side deeper at once)."""
        ...

    @property
    def lookups_are_round_trips(self) -> bool:
        """Whether reading documents' vectors by id is a call to another service (Qdrant), so that a micro-batch
        gathers its queries' lookups into one call."""
        ...

    @property
    def workers_read_documents(self) -> bool:
        """Whether a worker can read the documents (not where they live in a folder only this api may open)."""
        ...

    async def documents(self, ids: Sequence[str], pair: ServingPair) -> list[StoredDoc | None]:
        """Where the tier keeps the documents of record: those of these ids, in order (None: no such one)."""
        ...

    async def count(self, pair: ServingPair) -> int:
        """Where the tier keeps the documents of record: how many there are."""
        ...

    def close(self) -> None: ...


class _Builds:
    """What both tiers share: the corpus pinned for a build."""

    def __init__(self, settings: Settings, reader: DocReader, holds: LogHolds) -> None:
        self.settings = settings
        self.reader = reader
        self.holds = holds

    def corpus(self) -> Corpus:
        return self.reader

    def pinned_corpus(self, pin: str) -> Corpus:
        """The corpus, its start offset pinned under `pin` so the log keeps what the build replays. Raises
        LogTrimmed if the log already lost entries the corpus has not applied."""
        corpus = self.corpus()
        self.holds.pin(pin, corpus.start_offset())
        self.holds.retention.check(corpus.start_offset())
        return corpus

    def _pin_stored(self, offset: str) -> None:
        self.holds.pin("open", offset)
        self.holds.retention.check(offset)


class LocalTier(_Builds):
    """FAISS in this process; snapshots under indexes/<version>/; documents in the Redis hash."""

    def has(self, version: str, centering: Centering | None) -> bool:
        return (snapshot_folder(self.settings.indexes_dir, version, centering) / SNAPSHOT_META).is_file()

    def open(self, encoder: Encoder, centering: Centering | None) -> tuple[ServingPair, bool]:
        folder = snapshot_folder(self.settings.indexes_dir, encoder.version, centering)
        try:
            index, offset = VectorIndex.load(folder, encoder.version, encoder.dim, index_spec(self.settings))
            self._pin_stored(offset)
            log.info("snapshot loaded", extra={"path": str(folder), "vectors": len(index), "offset": offset})
            return ServingPair(encoder, index, offset, centering), True
        except IndexMismatchError as exc:
            log.error("snapshot refused, rebuilding from documents: %s", exc)
        except LogTrimmed as exc:
            log.warning("snapshot in %s is older than the doc log (%s); encoding all documents", folder, exc)
        except SnapshotError as exc:
            log.info("no usable snapshot (%s); encoding all documents", exc)
        corpus = self.pinned_corpus("open")  # build_index replays from its start offset
        centering = centering or means_for_build(corpus, encoder, self.settings)
        return build_index(corpus, encoder, index_spec(self.settings), chunk=2_048, centering=centering), False

    def rebuild(self, pair: ServingPair) -> ServingPair:
        return build_index(self.pinned_corpus("rebuild"), pair.encoder, index_spec(self.settings), chunk=2_048,
                           centering=pair.centering)

    def replay(self, pair: ServingPair) -> None:
        catch_up(self.reader, pair, self.settings.applier_batch)

    def persist(self, pair: ServingPair) -> None:
        assert isinstance(pair.index, VectorIndex)  # this tier's own indexes
        pair.index.save(snapshot_folder(self.settings.indexes_dir, pair.version, pair.centering), pair.applied_offset)

    def built(self, pair: ServingPair) -> None:
        pass  # the applier snapshots it

    @property
    def calibrates_here(self) -> bool:
        return True

    def calibrate(self, pair: ServingPair) -> Centering | None:
        assert isinstance(pair.index, VectorIndex)  # this tier's own indexes
        return calibrate_from_index(pair, pair.index, self.corpus(), self.settings)

    @property
    def recentres_here(self) -> bool:
        return True

    def copy_for_recentring(self, pair: ServingPair) -> IndexCopy:
        assert isinstance(pair.index, VectorIndex)
        return copy_index(pair.index, pair.applied_offset)

    def recentred(self, pair: ServingPair, copy: IndexCopy, centering: Centering) -> ServingPair:
        return recentred(pair, copy, centering, self.corpus(), index_spec(self.settings))

    def serve(self, pair: ServingPair) -> None:
        pass

    def replaced(self, pair: ServingPair) -> bool:
        return False  # only this replica writes its index

    @property
    def shared(self) -> SharedIndex | None:
        return None

    def lexical_of(self, pair: ServingPair) -> LexicalSearch | None:
        return None

    @property
    def keeps_documents(self) -> bool:
        return False

    @property
    def scans_every_vector(self) -> bool:
        return self.settings.index == "flat"

    @property
    def lookups_are_round_trips(self) -> bool:
        return False

    @property
    def workers_read_documents(self) -> bool:
        return True

    async def documents(self, ids: Sequence[str], pair: ServingPair) -> list[StoredDoc | None]:
        raise NotImplementedError("the local tier keeps no documents: the Redis hash does")

    async def count(self, pair: ServingPair) -> int:
        raise NotImplementedError("the local tier keeps no documents: the Redis hash does")

    def close(self) -> None:
        pass


class QdrantTier(_Builds):
    """A Qdrant collection per version and means (state/qdrant_store.py): durable writes, one writer replica,
    the alias pointed at the serving one; BM25 and the documents of record in it where configured."""

    def __init__(self, settings: Settings, reader: DocReader, holds: LogHolds, store: QdrantStore) -> None:
        super().__init__(settings, reader, holds)
        self.store = store

    def has(self, version: str, centering: Centering | None) -> bool:
        return self.store.has(version, centering)

    def corpus(self) -> Corpus:
        """The hash, or the serving collection's payload (documents in Qdrant)."""
        return self.store.corpus(self.reader)

    def open(self, encoder: Encoder, centering: Centering | None) -> tuple[ServingPair, bool]:
        """The version's current collection at its recorded offset, or a new one built from the documents (the
        worker builds it first against a server; in local mode, this process does)."""
        store = self.store
        found = store.open(encoder.version, encoder.dim, centering)
        if found is not None:
            index, offset = found
            try:
                self._pin_stored(offset)
                log.info("qdrant collection opened", extra={"collection": index.collection, "offset": offset})
                return ServingPair(encoder, index, offset, centering), True
            except LogTrimmed as exc:
                log.warning("collection %s is older than the doc log (%s); building a new one", index.collection, exc)
        elif not store.may_build(encoder.version, centering):
            # Another replica builds it (several replicas starting at once): wait for its record, then replay.
            built = store.wait_for_build(encoder.version, encoder.dim, centering, BUILD_WAIT_S)
            if built is not None:
                self.holds.pin("open", built[1])
                return ServingPair(encoder, built[0], built[1], centering), True
        corpus = self.pinned_corpus("open")
        centering = centering or means_for_build(corpus, encoder, self.settings)
        into = store.create(encoder.version, encoder.dim, centering)
        version = encoder.version

        def renew_claim(done: int, total: int) -> None:
            store.may_build(version, centering)

        return build_index(corpus, encoder, index_spec(self.settings), chunk=2_048, centering=centering,
                           into=into, progress=renew_claim), False

    def rebuild(self, pair: ServingPair) -> ServingPair:
        corpus = self.pinned_corpus("rebuild")
        into = self.store.create(pair.version, pair.encoder.dim, pair.centering)
        return build_index(corpus, pair.encoder, index_spec(self.settings), chunk=2_048, centering=pair.centering,
                           into=into)

    def replay(self, pair: ServingPair) -> None:
        """Apply the log, or, on a collection another replica writes, wait until that replica's record passes the
        end of the log as it is now."""
        if self.store.may_write(pair):
            catch_up(self.reader, pair, self.settings.applier_batch)
            return
        target, deadline = offset_key(self.reader.last_offset()), time.monotonic() + BUILD_WAIT_S
        while (written := self.store.written_to(pair)) is None or offset_key(written) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica writing {self.store.collection_of(pair).collection} did not catch up")
            time.sleep(0.05)
        pair.applied_offset = written

    def persist(self, pair: ServingPair) -> None:
        """Qdrant's writes are durable already: record the offset the collection has applied."""
        self.store.record(pair)

    def built(self, pair: ServingPair) -> None:
        self.store.record(pair)  # one Redis write: a restart opens the collection just built

    @property
    def calibrates_here(self) -> bool:
        return not self.workers_read_documents

    def calibrate(self, pair: ServingPair) -> Centering | None:
        """The documents are in this api's local-mode folder: encode a sample of them here."""
        return calibrate_corpus(self.corpus(), pair.encoder, self.settings)

    @property
    def recentres_here(self) -> bool:
        return False  # the vectors are in Qdrant: a new collection is built with the new means

    def copy_for_recentring(self, pair: ServingPair) -> IndexCopy:
        raise NotImplementedError("the Qdrant tier builds a new collection for new means")

    def recentred(self, pair: ServingPair, copy: IndexCopy, centering: Centering) -> ServingPair:
        raise NotImplementedError("the Qdrant tier builds a new collection for new means")

    def serve(self, pair: ServingPair) -> None:
        self.store.serve(pair)

    def replaced(self, pair: ServingPair) -> bool:
        """Another replica rebuilt the serving version's collection (its log offset was trimmed, say), and the one
        this replica serves will be dropped."""
        current = self.store.current(pair.version, pair.centering)
        return current is not None and current != self.store.collection_of(pair).collection

    @property
    def shared(self) -> SharedIndex | None:
        return self.store

    def lexical_of(self, pair: ServingPair) -> LexicalSearch | None:
        if not self.settings.lexical_in_qdrant:
            return None
        from xling.models.index.qdrant_lexical import QdrantLexical  # imports qdrant-client

        return QdrantLexical(self.store.collection_of(pair))

    @property
    def keeps_documents(self) -> bool:
        return self.settings.documents_in_qdrant

    @property
    def scans_every_vector(self) -> bool:
        return False

    @property
    def lookups_are_round_trips(self) -> bool:
        return True

    @property
    def workers_read_documents(self) -> bool:
        """Not in the client's local mode, whose folder this process alone opens."""
        return not (self.settings.qdrant_local and self.keeps_documents)

    async def documents(self, ids: Sequence[str], pair: ServingPair) -> list[StoredDoc | None]:
        found = await asyncio.to_thread(self.store.documents_of(pair).get_many, ids)
        return [found.get(doc_id) for doc_id in ids]

    async def count(self, pair: ServingPair) -> int:
        return await asyncio.to_thread(len, pair.index)

    def close(self) -> None:
        self.store.close()  # local mode: frees the folder's lock for the next process


def make_tier(settings: Settings, reader: DocReader, holds: LogHolds, redis_client: Redis, keys: RedisKeys
              ) -> IndexTier:
    """The tier XLING_INDEX names: qdrant, else local (flat, hnsw)."""
    if settings.index == "qdrant":
        from xling.state.qdrant_store import QdrantStore  # qdrant-client is imported only where it is used

        return QdrantTier(settings, reader, holds, QdrantStore(settings, redis_client, keys, holder=holds.holder))
    return LocalTier(settings, reader, holds)

"""Qdrant as the index tier (XLING_INDEX=qdrant): which collection serves each model version, the doc-log
offset it has applied, and the alias that follows what serves.

A collection plays the part a FAISS snapshot plays on one machine: built once per (model version, means), then
kept current by the applier; but it lives in Qdrant, not in the api's memory. Every build creates a new
collection (`<prefix>-<version>-<means>-<stamp>`), so a rebuild never writes into the collection that serves.
The Redis hash `qdrant_collections` names the current collection of each (version, means) and the offset up to
which it has applied the log. The offset is written after the writes it covers, and those wait for Qdrant
(`wait=True`), so it never runs ahead of the collection: a restart replays from it, and replaying is idempotent.
The alias `<prefix>-serving` moves, in one step, to the collection the api serves from, for readers outside
xling. A collection that a rebuild replaced is dropped `qdrant_drop_after_s` later, once searches still running
against it have finished.

With the client's embedded local mode (`XLING_QDRANT_PATH`) only one process may open the folder: the api
process then does the collection work that a worker does against a server (settings.qdrant_local).

With XLING_DOCUMENT_STORE=qdrant the collection the alias names is where documents are kept (there is no Redis
hash): reads by id and counts come from its payload, and a build reads it (`corpus`) and replays the log from
its recorded offset. So that offset is held in the log for as long as that collection serves
(`STORE_OF_RECORD`): trimming can never pass what the store of record has not applied.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from qdrant_client import QdrantClient

from xling.models.centering import Centering
from xling.models.index.qdrant_index import (
    QdrantIndex,
    alias_target,
    collection_name,
    create_collection,
    has_lexical,
    point_alias,
)
from xling.state.docstore import Corpus, DocReader
from xling.state.indexing import ServingPair
from xling.state.keys import RedisKeys
from xling.state.leases import Leases
from xling.state.qdrant_connection import qdrant_client
from xling.state.qdrant_lengths import RedisLengths
from xling.state.qdrant_sweeps import CollectionSweeps
from xling.state.retention import LogRetention
from xling.state.settings import Settings

if TYPE_CHECKING:
    import redis

    from xling.state.qdrant_documents import CollectionCorpus

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 600.0  # how often a writer looks for collections that crashed builds left behind
STORE_OF_RECORD = "documents-of-record"  # the log hold at the serving collection's recorded offset
STORE_OF_RECORD_TTL_S = 10 * 365 * 86_400.0  # moved forward by every record; never meant to lapse


def slot(version: str, centering: Centering | None) -> str:
    """What a collection serves: a model version, with the means its vectors are centred on (or raw ones)."""
    return f"{version}/{centering.id if centering is not None else 'raw'}"


class QdrantStore:
    """`holder` names this process among the api replicas: one of them at a time, the one holding a collection's
    writer lease, applies the log to that collection (`may_write`); the others follow its recorded offset."""

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        keys: RedisKeys,
        holder: str = "",
        client: QdrantClient | None = None,
    ) -> None:
        """`client`: one to share (tests play several replicas against one local-mode folder); default: a new
        one from the settings."""
        self.settings = settings
        self.redis = redis_client
        self.keys = keys
        self.holder = holder
        self.client = client if client is not None else qdrant_client(settings)
        self.alias = f"{settings.key_prefix}-serving"
        self.leases = Leases(redis_client, holder, settings.qdrant_writer_lease_s)  # released on close
        self.sweeps = CollectionSweeps(settings, redis_client, keys, self.client, self.alias)
        self._swept_at = -float("inf")
        self._serving: str | None = None  # the collection this replica last pointed the alias at
        self._retention = LogRetention(redis_client, keys)

    def close(self) -> None:
        self.release()
        self.client.close()

    def release(self) -> None:
        """Give up every lease this replica holds: a restarted replica, or another, writes at once rather than
        after the lease lapses."""
        self.leases.release()

    def handle(self, collection: str, dim: int, version: str) -> QdrantIndex:
        """An index on this collection with this store's settings (BM25 vectors, their length tally)."""
        lengths = RedisLengths(self.redis, self.keys.qdrant_lengths(collection)) if self.lexical else None
        return QdrantIndex(
            self.client, collection, dim, version, exact_filter_max=self.settings.hnsw_exact_filter_max, lengths=lengths
        )

    @property
    def lexical(self) -> bool:
        """Collections carry BM25 vectors (settings.lexical_in_qdrant)."""
        return self.settings.lexical_in_qdrant

    def open(self, version: str, dim: int, centering: Centering | None) -> tuple[QdrantIndex, str] | None:
        """The current collection of this version and means, with the offset it has applied; None when there
        is none yet (or Redis names one that Qdrant no longer has)."""
        record = self._record(version, centering)
        if record is None:
            return None
        if not self.client.collection_exists(record["collection"]):
            log.warning(
                "qdrant: collection %s of %s is gone; building a new one",
                record["collection"],
                slot(version, centering),
            )
            return None
        if self.lexical and not has_lexical(self.client, record["collection"]):
            log.warning("qdrant: collection %s carries no BM25 vectors; building a new one", record["collection"])
            return None
        return self.handle(record["collection"], dim, version), str(record["offset"])

    def has(self, version: str, centering: Centering | None) -> bool:
        """Whether this version with these means has a current collection."""
        current = self.current(version, centering)
        return current is not None and self.client.collection_exists(current)

    def _record(self, version: str, centering: Centering | None) -> dict[str, str] | None:
        """{collection, offset} of the slot's current collection (None: none recorded)."""
        raw = self.redis.hget(self.keys.qdrant_collections, slot(version, centering))
        return None if raw is None else dict(json.loads(raw))

    def create(self, version: str, dim: int, centering: Centering | None) -> QdrantIndex:
        """A new, empty collection for a build of this version and means; current only once `record`ed."""
        means = centering.id if centering is not None else "raw"
        name = collection_name(self.settings.key_prefix, f"{version}-{means}-{time.time_ns():x}")
        on_disk = self.settings.qdrant_on_disk
        made = {"xling_prefix": self.settings.key_prefix, "slot": slot(version, centering), "created": time.time()}
        create_collection(self.client, name, dim, on_disk=on_disk, int8=on_disk, lexical=self.lexical, metadata=made)
        log.info("qdrant: collection created", extra={"collection": name, "version": version})
        return self.handle(name, dim, version)

    def record(self, pair: ServingPair) -> None:
        """The pair's collection is the current one of its version and means, and has applied the log up to the
        pair's offset. A different collection that was current before is retired."""
        collection = self.collection_of(pair).collection
        previous = self.current(pair.version, pair.centering)
        record = json.dumps({"collection": collection, "offset": pair.applied_offset})
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.qdrant_collections, slot(pair.version, pair.centering), record)
        if previous is not None and previous != collection:
            pipe.zadd(self.keys.qdrant_retired, {previous: time.time()})
        pipe.execute()
        if self.settings.documents_in_qdrant and collection == self._serving:
            self._retention.hold(STORE_OF_RECORD, pair.applied_offset, STORE_OF_RECORD_TTL_S)
        self.sweeps.drop_retired()
        if time.monotonic() - self._swept_at > SWEEP_EVERY_S:
            self._swept_at = time.monotonic()
            self.sweeps.sweep_unrecorded()

    def may_write(self, pair: ServingPair) -> bool:
        """Whether this replica writes the log into the pair's collection now: it holds (or has just taken, or
        renewed) the collection's writer lease. One writer per collection, because two replicas applying the
        same entries could land an older read of a document after a newer one."""
        return self.leases.take(self.keys.qdrant_writer(self.collection_of(pair).collection))

    def may_build(self, version: str, centering: Centering | None) -> bool:
        """Whether this replica builds the version's collection (one replica builds; the others wait for the
        record, `wait_for_build`). Called again while building, it renews the claim."""
        return self.leases.take(self.keys.qdrant_writer(f"build:{slot(version, centering)}"))

    def wait_for_build(
        self, version: str, dim: int, centering: Centering | None, timeout_s: float
    ) -> tuple[QdrantIndex, str] | None:
        """The collection another replica is building, once it is recorded; None if its builder stopped renewing
        its claim (then this replica may build) or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.open(version, dim, centering)
            if found is not None:
                return found
            if self.may_build(version, centering):
                return None
            time.sleep(0.2)
        raise TimeoutError(f"qdrant: {slot(version, centering)} is still being built by another replica")

    def current(self, version: str, centering: Centering | None) -> str | None:
        """The name of the version's current collection (None: none recorded)."""
        record = self._record(version, centering)
        return None if record is None else str(record["collection"])

    def written_to(self, pair: ServingPair) -> str | None:
        """The offset up to which the writer has applied the log to the pair's collection (None: not recorded)."""
        record = self._record(pair.version, pair.centering)
        if record is None or record["collection"] != self.collection_of(pair).collection:
            return None
        return str(record["offset"])

    def serve(self, pair: ServingPair) -> None:
        """Point the serving alias at the pair's collection (one atomic alias update). With documents in Qdrant
        the collection is recorded first, so that the alias never names a collection whose offset a build could
        not find, and from then on the log is held at its recorded offset."""
        collection = self.collection_of(pair).collection
        self._serving = collection
        if self.settings.documents_in_qdrant and self.written_to(pair) is None:
            self.record(pair)
        if alias_target(self.client, self.alias) != collection:
            point_alias(self.client, self.alias, collection)
        if self.settings.documents_in_qdrant and (written := self.written_to(pair)) is not None:
            self._retention.hold(STORE_OF_RECORD, written, STORE_OF_RECORD_TTL_S)

    def documents_of(self, pair: ServingPair) -> CollectionCorpus:
        """The documents in the pair's collection's payload (reads by id: its offset plays no part)."""
        from xling.state.qdrant_documents import CollectionCorpus

        return CollectionCorpus(self.collection_of(pair), pair.applied_offset)

    def corpus(self, hash_reader: DocReader, attempts: int = 5) -> Corpus:
        """Where a build reads every document: the hash, or with XLING_DOCUMENT_STORE=qdrant the collection the
        alias names, at the offset its record holds (read before the scroll). While no collection serves yet
        (a deployment switching to documents in Qdrant), its first build reads the hash, and the log entries
        carry the documents from then on."""
        from xling.state.qdrant_documents import CollectionCorpus

        if not self.settings.documents_in_qdrant:
            return hash_reader
        for _ in range(attempts):  # a swap may retire the alias's collection between the two reads
            target = alias_target(self.client, self.alias)
            if target is None:
                return hash_reader
            for raw in self.redis.hvals(self.keys.qdrant_collections):
                record = json.loads(raw)
                if record["collection"] == target:
                    return CollectionCorpus(QdrantIndex(self.client, target, 0, "corpus"), str(record["offset"]))
            time.sleep(0.1)
        raise RuntimeError(f"qdrant: the serving collection {target} has no record in Redis, so the offset its "
                           "documents reach is unknown; activate a recorded version first "
                           "(POST /models/{version}/activate)")

    @staticmethod
    def collection_of(pair: ServingPair) -> QdrantIndex:
        """The pair's index, which on this tier is a collection."""
        if not isinstance(pair.index, QdrantIndex):
            raise TypeError(f"{pair.version}: an in-memory index where a Qdrant collection was expected")
        return pair.index


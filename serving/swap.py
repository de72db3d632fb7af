"""Hot swap, api side (DESIGN §8): which encoder and index serve, and replacing them without a failed request
or a lost write. A new pair is loaded beside the serving one, the log replayed into it, and one reference swapped
under the applier's lock; requests already running finish on the old pair."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xling.models.centering import Centering
from xling.models.encoder import Encoder
from xling.models.index.vector_index import SNAPSHOT_META, IndexMismatchError, SnapshotError, VectorIndex
from xling.models.resolve import ModelNotFoundError, ModelSource, resolve_model
from xling.serving.applier import Applier, Watermark
from xling.serving.holds import LogHolds
from xling.serving.metrics import Metrics
from xling.state.centering import (
    centering_stamp,
    load_centering,
    means_for_build,
    snapshot_folder,
    uncalibrated_status,
)
from xling.state.docstore import Corpus, DocReader, offset_key
from xling.state.indexing import ServingPair, build_index, catch_up, index_spec, load_encoder
from xling.state.polling import OUTAGE_ERRORS, poll
from xling.state.registry import Registry
from xling.state.retention import LogTrimmed
from xling.state.settings import Settings

if TYPE_CHECKING:
    from xling.state.qdrant_store import QdrantStore

log = logging.getLogger(__name__)
SWAP_RETRY_S = 30.0
BUILD_WAIT_S = 1_800.0  # Qdrant: how long a replica waits for another to build or replay a collection


class HotSwap:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        reader: DocReader,
        holds: LogHolds,
        watermark: Watermark,
        metrics: Metrics,
        qdrant: QdrantStore | None = None,
    ) -> None:
        """`qdrant`: with XLING_INDEX=qdrant, the collections that take the place of in-memory indexes and their
        snapshots (state/qdrant_store.py)."""
        self.settings = settings
        self.qdrant = qdrant
        self.registry = registry
        self.reader = reader
        self.holds = holds
        self.watermark = watermark
        self.metrics = metrics
        self.pair: ServingPair | None = None
        self.source: ModelSource | None = None
        self.since = 0.0  # unix time the serving pair took over
        self.error: str | None = None  # why the last swap failed (shown by /healthz and /models/active)
        self.applier: Applier | None = None  # set once the first pair serves
        self._failed: tuple[str, float] | None = None  # (version, when)
        # ((means file stamp, serving means id), whether the file holds other means): read the file only on change
        self._means_checked: tuple[tuple[tuple[int, int] | None, str | None], bool] | None = None
        # Told when the serving pair's drift status advises recalibration: (version, reasons).
        self.on_recalibrate: Callable[[str, list[str]], None] | None = None

    def _serving(self) -> ServingPair:
        """The pair that serves; the watcher and the rebuild start only once the first one does."""
        assert self.pair is not None, "no pair serves yet"
        return self.pair

    @cached_property
    def default_source(self) -> ModelSource:
        """The configured model (XLING_RETRIEVAL_MODEL), resolved once: one hub lookup, one fallback warning."""
        return resolve_model(self.settings.retrieval_model, self.settings.models_dir)

    @property
    def default_version(self) -> str:
        """The version of the configured model, served when none is activated."""
        return self.default_source.version

    def snapshot_dir(self, pair: ServingPair) -> Path:
        """Where this pair's snapshots go: its version's folder, and within it the folder of its means."""
        return snapshot_folder(self.settings.indexes_dir, pair.version, pair.centering)

    def has_snapshot(self, version: str) -> bool:
        """Whether `version` can serve at once: a snapshot (or Qdrant collection) built with its current means
        exists."""
        centering = load_centering(self.settings, version)
        if self.qdrant is not None:
            return self.qdrant.has(version, centering)
        folder = snapshot_folder(self.settings.indexes_dir, version, centering)
        return (folder / SNAPSHOT_META).is_file()

    def persist(self, pair: ServingPair) -> None:
        """Make the pair's state survive a restart: a snapshot of the in-memory index, or, on Qdrant (whose
        writes are already durable), the offset its collection has applied."""
        if self.qdrant is not None:
            self.qdrant.record(pair)
        else:
            assert isinstance(pair.index, VectorIndex)
            pair.index.save(self.snapshot_dir(pair), pair.applied_offset)

    def centering_status(self) -> dict[str, Any]:
        """The serving pair's drift since its means were calibrated (empty when centring is off)."""
        pair, settings = self.pair, self.settings
        if pair is None or not settings.centering:
            return {}
        if pair.centering is None:
            return uncalibrated_status(pair.index.languages(), len(pair.index), settings.centering_min_docs)
        return pair.drift.status(pair.centering, settings.centering_min_docs, settings.centering_drift_threshold)

    def startup_source(self) -> ModelSource:
        """The activated version; if it cannot be loaded, the configured model (and say why)."""
        activated = self.registry.active()
        if activated:
            try:
                return resolve_model(activated, self.settings.models_dir)
            except ModelNotFoundError as exc:
                self.error = f"activated version {activated!r} cannot be loaded ({exc}); serving the default"
                log.error(self.error)
        return self.default_source

    def open_index(self, source: ModelSource) -> tuple[ServingPair, bool]:
        """The source's encoder with its version's snapshot if there is a valid one, else a full build from the
        documents. Pins the offset it replays from as "open" (unpinned by `serve` or when the swap fails)."""
        encoder = load_encoder(source, self.settings)
        centering = load_centering(self.settings, encoder.version)
        if self.qdrant is not None:
            return self._open_collection(encoder, centering)
        folder = snapshot_folder(self.settings.indexes_dir, encoder.version, centering)
        try:
            index, offset = VectorIndex.load(folder, encoder.version, encoder.dim, index_spec(self.settings))
            self.holds.pin("open", offset)
            self.holds.retention.check(offset)
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

    def corpus(self) -> Corpus:
        """What a build reads every document from: the hash, or the serving collection's payload."""
        return self.reader if self.qdrant is None else self.qdrant.corpus(self.reader)

    def pinned_corpus(self, pin: str) -> Corpus:
        """The corpus, its start offset pinned under `pin` so the log keeps what the build replays. Raises
        LogTrimmed if the log already lost entries the corpus has not applied (documents in Qdrant whose
        collection was lost)."""
        corpus = self.corpus()
        self.holds.pin(pin, corpus.start_offset())
        self.holds.retention.check(corpus.start_offset())
        return corpus

    def _open_collection(self, encoder: Encoder, centering: Centering | None) -> tuple[ServingPair, bool]:
        """open_index on Qdrant: the version's current collection at its recorded offset, or a new one built
        from the documents (the worker builds it first against a server; in local mode, this process does)."""
        assert self.qdrant is not None
        found = self.qdrant.open(encoder.version, encoder.dim, centering)
        if found is not None:
            index, offset = found
            try:
                self.holds.pin("open", offset)
                self.holds.retention.check(offset)
                log.info("qdrant collection opened", extra={"collection": index.collection, "offset": offset})
                return ServingPair(encoder, index, offset, centering), True
            except LogTrimmed as exc:
                log.warning("collection %s is older than the doc log (%s); building a new one", index.collection, exc)
        elif not self.qdrant.may_build(encoder.version, centering):
            # Another replica builds it (several replicas starting at once): wait for its record, then replay.
            built = self.qdrant.wait_for_build(encoder.version, encoder.dim, centering, BUILD_WAIT_S)
            if built is not None:
                self.holds.pin("open", built[1])
                return ServingPair(encoder, built[0], built[1], centering), True
        corpus = self.pinned_corpus("open")
        centering = centering or means_for_build(corpus, encoder, self.settings)
        into = self.qdrant.create(encoder.version, encoder.dim, centering)
        qdrant, version = self.qdrant, encoder.version

        def renew_claim(done: int, total: int) -> None:
            qdrant.may_build(version, centering)

        return build_index(corpus, encoder, index_spec(self.settings), chunk=2_048, centering=centering,
                           into=into, progress=renew_claim), False

    def serve_first(self, pair: ServingPair, source: ModelSource, applier: Applier) -> None:
        """The pair loaded at start-up serves, with the applier that keeps it current."""
        self.pair, self.source, self.since, self.applier = pair, source, time.time(), applier
        self._point_alias(pair)

    def _point_alias(self, pair: ServingPair) -> None:
        if self.qdrant is not None:
            self.qdrant.serve(pair)

    def watch(self, stop: threading.Event) -> None:
        """Poll which version should serve; swap when it differs from the serving one."""
        poll(self._follow_active, stop, every_s=self.settings.swap_poll_s, what="model watcher", logger=log)

    def _follow_active(self) -> None:
        wanted = self.registry.active()
        desired = wanted or self.default_version
        try:
            serving = self._serving()
            if desired == serving.version and not self._means_replaced(serving) and not self._rebuilt(serving):
                self._advise_recalibration(serving)
                return
            if self._recently_failed(desired):
                return
            self.swap_to(wanted or self.settings.retrieval_model)
            self.error = self._failed = None
        except OUTAGE_ERRORS:
            raise  # not a failed swap: which model should serve is unknown until Redis is back
        except Exception as exc:  # keep serving the old pair; say why in /healthz and /models/active
            self.error = f"swap to {desired!r} failed: {type(exc).__name__}: {exc}"
            self._failed = (desired, time.monotonic())
            log.exception("hot swap failed; still serving the previous model")

    def _means_replaced(self, serving: ServingPair) -> bool:
        """Whether the serving version's means file now holds other means than the serving pair's (a
        recalibration, or the first calibration another replica or the worker wrote): then swap to them. Until
        that swap succeeds the answer stays yes, so a failed one is retried like a failed model swap."""
        if not self.settings.centering:
            return False
        key = (centering_stamp(self.settings, serving.version), serving.centering.id if serving.centering else None)
        if self._means_checked is None or self._means_checked[0] != key:
            current = load_centering(self.settings, serving.version)
            self._means_checked = (key, (current.id if current else None) != key[1])
        return self._means_checked[1]

    def _rebuilt(self, serving: ServingPair) -> bool:
        """On Qdrant: another replica rebuilt the serving version's collection (its log offset was trimmed, say),
        and the one this replica serves will be dropped; swap to the new one."""
        if self.qdrant is None:
            return False
        current = self.qdrant.current(serving.version, serving.centering)
        return current is not None and current != self.qdrant.collection_of(serving).collection

    def _advise_recalibration(self, serving: ServingPair) -> None:
        status = self.centering_status()
        if not status.get("recalibrate") or self.on_recalibrate is None:
            return
        try:
            self.on_recalibrate(serving.version, status["reasons"])
        except OUTAGE_ERRORS:
            raise
        except Exception:  # not a swap failure: log it, serve on, ask again after the requeue interval
            log.exception("centring: could not queue a recalibration")

    def _recently_failed(self, version: str) -> bool:
        """A version whose swap failed is retried after SWAP_RETRY_S, not on every poll."""
        return (
            self._failed is not None
            and self._failed[0] == version
            and (time.monotonic() - self._failed[1] < SWAP_RETRY_S)
        )

    def swap_to(self, spec: str | None) -> None:
        """Load the new encoder and its index beside the serving pair, replay the log, swap one reference."""
        started = time.monotonic()
        try:
            source = resolve_model(spec, self.settings.models_dir)
            pair, from_snapshot = self.open_index(source)
            old = self._take_over(pair, pair.applied_offset if from_snapshot else None, source)
            if self.qdrant is not None and not from_snapshot:
                self.persist(pair)  # one Redis write: a restart opens the collection just built
        finally:
            self.holds.unpin("open")  # also when the swap fails: a pin left behind would stop all trimming
        self.metrics.index_size.set(len(pair.index))
        log.info(
            "model swapped",
            extra={
                "from": old.version if old else None,
                "to": pair.version,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def rebuild(self) -> None:
        """This replica fell behind the trimmed log (away longer than its hold lasted): rebuild its index from
        the documents (the hash, or the serving collection) with the same encoder, replay, swap. Searches go on
        against the old index meanwhile."""
        assert self.applier is not None
        pair = self._serving()
        log.warning(
            "the doc log was trimmed past this replica's offset %s; rebuilding its index from the documents",
            pair.applied_offset,
        )
        try:
            corpus = self.pinned_corpus("rebuild")
            into = None if self.qdrant is None else self.qdrant.create(pair.version, pair.encoder.dim, pair.centering)
            rebuilt = build_index(corpus, pair.encoder, index_spec(self.settings), chunk=2_048,
                                  centering=pair.centering, into=into)
            self._take_over(rebuilt, snapshot_offset=None)
        finally:
            self.holds.unpin("rebuild")
        self.applier.snapshot()

    def _take_over(
        self, pair: ServingPair, snapshot_offset: str | None, source: ModelSource | None = None
    ) -> ServingPair | None:
        """Replay the log into `pair` while the serving one goes on, then swap under the applier lock (the
        applier is between steps: nothing applies to the old pair now). Returns the pair it replaced."""
        assert self.applier is not None
        self._replay(pair)  # most of the replay, outside the lock
        with self.applier.lock:
            self._replay(pair)
            if source is not None:  # a swap (counted before it shows: whoever sees the new pair sees the count)
                self.metrics.swaps.inc()
            old, self.pair = self.pair, pair
            if source is not None:  # a new model; a rebuild keeps the model and its serving time
                self.source, self.since = source, time.time()
            self.applier.snapshot_offset = snapshot_offset
            self.watermark.advance(pair.applied_offset)
        self._point_alias(pair)
        return old

    def _replay(self, pair: ServingPair) -> None:
        """Bring the pair up to the end of the log: apply it, or, on a Qdrant collection another replica writes,
        wait until that replica's record passes the end of the log as it is now."""
        if self.qdrant is None or self.qdrant.may_write(pair):
            catch_up(self.reader, pair, self.settings.applier_batch)
            return
        target, deadline = offset_key(self.reader.last_offset()), time.monotonic() + BUILD_WAIT_S
        while (written := self.qdrant.written_to(pair)) is None or offset_key(written) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica writing {self.qdrant.collection_of(pair).collection} did not catch up")
            time.sleep(0.05)
        pair.applied_offset = written

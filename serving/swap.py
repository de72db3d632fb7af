"""Hot swap, api side (DESIGN §8): which encoder and index serve, and replacing them without a failed request
or a lost write. A new pair is loaded beside the serving one, the log replayed into it, and one reference swapped
under the applier's lock; requests already running finish on the old pair."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

from xling.models.centering import Centering
from xling.models.resolve import ModelNotFoundError, ModelSource, resolve_model
from xling.serving.applier import Applier, Watermark
from xling.serving.holds import LogHolds
from xling.serving.metrics import Metrics
from xling.serving.tiers import IndexTier
from xling.state.centering import (
    centering_stamp,
    load_centering,
    uncalibrated_status,
)
from xling.state.docstore import Corpus, DocReader
from xling.state.indexing import ServingPair, load_encoder
from xling.state.polling import OUTAGE_ERRORS, poll
from xling.state.registry import Registry
from xling.state.settings import Settings

log = logging.getLogger(__name__)
SWAP_RETRY_S = 30.0


class HotSwap:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        reader: DocReader,
        holds: LogHolds,
        watermark: Watermark,
        metrics: Metrics,
        tier: IndexTier,
    ) -> None:
        """`tier`: where the indexes live (serving/tiers.py)."""
        self.settings = settings
        self.tier = tier
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

    def has_snapshot(self, version: str) -> bool:
        """Whether `version` can serve at once: its index, built with its current means, is stored."""
        return self.tier.has(version, load_centering(self.settings, version))

    def persist(self, pair: ServingPair) -> None:
        """Make the pair's state survive a restart (a snapshot, or the offset a shared collection applied)."""
        self.tier.persist(pair)

    def centering_status(self) -> dict[str, Any]:
        """The serving pair's drift since its means were calibrated (empty when centring is off)."""
        pair, settings = self.pair, self.settings
        if pair is None or not settings.centering:
            return {}
        if pair.centering is None:
            return uncalibrated_status(pair.index.languages(), len(pair.index), settings.centering_min_docs)
        return pair.drift.status(pair.centering, settings.centering_min_docs, settings.centering_drift_threshold,
                                 pair.index.languages())

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
        """The source's encoder with its version's stored index if there is a valid one, else a full build from
        the documents. Pins the offset it replays from as "open" (unpinned by `serve` or when the swap fails)."""
        encoder = load_encoder(source, self.settings)
        return self.tier.open(encoder, load_centering(self.settings, encoder.version))

    def corpus(self) -> Corpus:
        """What a build reads every document from."""
        return self.tier.corpus()

    def serve_first(self, pair: ServingPair, source: ModelSource, applier: Applier) -> None:
        """The pair loaded at start-up serves, with the applier that keeps it current."""
        self.pair, self.source, self.since, self.applier = pair, source, time.time(), applier
        self.tier.serve(pair)

    def watch(self, stop: threading.Event) -> None:
        """Poll which version should serve; swap when it differs from the serving one."""
        poll(self._follow_active, stop, every_s=self.settings.swap_poll_s, what="model watcher", logger=log)

    def _follow_active(self) -> None:
        wanted = self.registry.active()
        desired = wanted or self.default_version
        try:
            serving = self._serving()
            new_means = self._means_replaced(serving)
            if desired == serving.version and not new_means and not self.tier.replaced(serving):
                self._advise_recalibration(serving)
                return
            if self._recently_failed(desired):
                return
            centering = load_centering(self.settings, serving.version) if new_means else None
            if desired == serving.version and centering is not None and self.tier.recentres_here:
                self.recentre(serving, centering)
            else:
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
            if not from_snapshot:
                self.tier.built(pair)
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

    def recentre(self, serving: ServingPair, centering: Centering) -> None:
        """The serving version has new means: apply them to the vectors its index holds (serving/recentring.py,
        no encoding), replay, swap. The copy is taken with the applier paused (a memory copy); the new index is
        built while searches and writes go on."""
        assert self.applier is not None
        started = time.monotonic()
        with self.applier.lock:
            copy = self.tier.copy_for_recentring(serving)
        pair = self.tier.recentred(serving, copy, centering)
        self._take_over(pair, None)  # the same model: not counted as a model swap
        self.applier.snapshot()  # a restart, and a worker building an adapter version on it, find it at once
        self.metrics.index_size.set(len(pair.index))
        log.info("means swapped", extra={"version": pair.version, "centering": centering.id,
                                         "from": serving.centering.id if serving.centering else None,
                                         "vectors": len(pair.index), "seconds": round(time.monotonic() - started, 2)})

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
            self._take_over(self.tier.rebuild(pair), snapshot_offset=None)
        finally:
            self.holds.unpin("rebuild")
        self.applier.snapshot()

    def _take_over(
        self, pair: ServingPair, snapshot_offset: str | None, source: ModelSource | None = None
    ) -> ServingPair | None:
        """Replay the log into `pair` while the serving one goes on, then swap under the applier lock (the
        applier is between steps: nothing applies to the old pair now). Returns the pair it replaced."""
        assert self.applier is not None
        self.tier.replay(pair)  # most of the replay, outside the lock
        with self.applier.lock:
            self.tier.replay(pair)
            if source is not None:  # a swap (counted before it shows: whoever sees the new pair sees the count)
                self.metrics.swaps.inc()
            old, self.pair = self.pair, pair
            if source is not None:  # a new model; a rebuild keeps the model and its serving time
                self.source, self.since = source, time.time()
            self.applier.snapshot_offset = snapshot_offset
            self.watermark.advance(pair.applied_offset)
        self.tier.serve(pair)
        return old

"""The engine: the façade of an api process, without HTTP. It builds and wires the parts (search.py, writes.py,
documents.py, recalibration.py, the hot swap, the applier, the log holds, the job queue), loads the model and
index in the background, and starts and stops them."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import IO, Any

from xling.models.encoder import TextKind
from xling.models.files import claim_folder
from xling.models.index.lexical import LexicalIndex, LexicalSearch
from xling.serving.applier import Applier, Watermark
from xling.serving.documents import Documents
from xling.serving.holds import LogHolds
from xling.serving.job_queue import JobQueue
from xling.serving.memory import limit_kernel_cache, release_free_memory
from xling.serving.metrics import Metrics
from xling.serving.recalibration import Recalibration
from xling.serving.search import Embedded, Search, SearchQuery, SearchResult
from xling.serving.swap import HotSwap
from xling.serving.tiers import make_tier
from xling.serving.writes import Writes
from xling.state.connections import async_redis_client, redis_client
from xling.state.docstore import DocReader, DocStore, ReplicaAcks, StoredDoc
from xling.state.errors import InvalidInput, NotReady
from xling.state.indexing import ServingPair, catch_up_lexical
from xling.state.jobstore import JobStore
from xling.state.keys import RedisKeys
from xling.state.polling import poll
from xling.state.registry import Registry
from xling.state.retention import LogRetention
from xling.state.settings import Settings

log = logging.getLogger(__name__)


class Engine:
    """Lifecycle and wiring; searches (`searches`), writes (`writes`), documents of record, the hot swap (`swap`),
    the log holds (`holds`), the job queue (`job_queue`) and recalibration are parts of their own."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if not settings.redis_configured:
            raise ValueError("Engine needs a Redis (xling serve starts an embedded one when none is configured)")
        self.settings = settings
        self.metrics = metrics
        self.keys = RedisKeys(settings.key_prefix)
        self.async_redis = async_redis_client(settings)
        self.sync_redis = redis_client(settings)
        self.reader = DocReader(self.sync_redis, self.keys)
        self.registry = Registry(self.sync_redis, self.keys, settings.models_dir)
        self.jobs = JobStore(self.sync_redis, self.keys)
        self.job_queue = JobQueue(settings, self.jobs, metrics)
        self.watermark = Watermark()
        self.holds = LogHolds(
            LogRetention(self.sync_redis, self.keys),
            holder=f"api:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            ttl_s=settings.log_hold_ttl_s,
            serving_offsets=self._serving_offsets,
        )
        self.tier = make_tier(settings, self.reader, self.holds, self.sync_redis, self.keys)
        self.docs = DocStore(
            self.async_redis, self.keys, ReplicaAcks(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
            in_hash=not self.tier.keeps_documents,
        )
        self.swap = HotSwap(settings, self.registry, self.reader, self.holds, self.watermark, metrics, self.tier)
        self.recalibration = Recalibration(settings, self.jobs, self.job_queue.submit, self.require_pair,
                                           self.tier.calibrate if self.tier.calibrates_here else None,
                                           quick=self.tier.recentres_here)
        self.swap.on_recalibrate = self.recalibration.ask
        self.load_error: str | None = None
        self.applier: Applier | None = None
        self.lexical: LexicalIndex | None = None  # this replica's BM25 index (settings.lexical_per_replica)
        self._lexical_claim: IO[bytes] | None = None  # holds its folder while this process runs
        self.documents_of_record = Documents(self.docs, self.tier, self.require_pair)
        self.searches = Search(settings, metrics, self.require_pair, self.lexical_of, self.documents_of_record,
                               scans_every_vector=self.tier.scans_every_vector,
                               lookups_are_round_trips=self.tier.lookups_are_round_trips)
        self.writes = Writes(self.docs, self.documents_of_record, self.watermark, lambda: self.ready)
        limit_kernel_cache(settings.kernel_cache_capacity)  # before the first encode
        self._loader: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []
        self._ready = False

    # Life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Return at once; the model and index load in the background (/readyz tells when)."""
        self.searches.start()
        self._loader = asyncio.create_task(self._load())
        self._spawn(self.job_queue.run_sweeper, "job-sweep")
        self._spawn(self._retain_log, "log-retention")
        if self.settings.memory_trim_interval_s > 0:
            self._spawn(self._trim_memory, "memory-trim")

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self._load_blocking)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model and index failed")
        finally:
            self.holds.unpin("open")

    def _load_blocking(self) -> None:
        started = time.monotonic()
        lexical_replayed = self._open_lexical() if self.settings.lexical_per_replica else 0
        source = self.swap.startup_source()
        pair, from_snapshot = self.swap.open_index(source)
        self.applier = Applier(
            self.reader,
            self.require_pair,
            self.watermark,
            self.metrics,
            persist=self.swap.persist,
            batch=self.settings.applier_batch,
            snapshot_every_entries=self.settings.snapshot_every_entries,
            snapshot_interval_s=self.settings.snapshot_interval_s,
            check_log=self.holds.retention.check,
            on_log_trimmed=self._rebuild_after_trim,
            lexical=self.lexical,
            shared=self.tier.shared,
        )
        self.swap.serve_first(pair, source, self.applier)
        self.applier.snapshot_offset = pair.applied_offset if from_snapshot else None
        replayed = self.applier.catch_up()
        if not from_snapshot or replayed:
            self.applier.snapshot()
        self.watermark.advance(pair.applied_offset)
        self.metrics.index_size.set(len(pair.index))
        self.applier.start()
        self._spawn(self.swap.watch, "swap-watcher")
        self._ready = True
        log.info(
            "ready",
            extra={
                "model_version": pair.version,
                "model_origin": source.origin,
                "vectors": len(pair.index),
                "replayed_entries": replayed,
                "from_snapshot": from_snapshot,
                "lexical_documents": len(self.lexical) if self.lexical is not None else None,
                "lexical_replayed_entries": lexical_replayed,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def _open_lexical(self) -> int:
        """This replica's lexical index, brought up to the end of the log (a model swap never touches it)."""
        folder, self._lexical_claim = claim_folder(self.settings.lexical_dir)
        self.lexical = LexicalIndex(folder)
        return catch_up_lexical(self.reader, self.lexical, self.settings.applier_batch, self.holds.retention.check,
                                self.swap.corpus())

    def _rebuild_after_trim(self) -> None:
        """The log was trimmed past this replica's offset: rebuild the vector index and the lexical one."""
        self.swap.rebuild()
        if self.lexical is not None:
            assert self.applier is not None
            with self.applier.lock:
                catch_up_lexical(self.reader, self.lexical, self.settings.applier_batch, self.holds.retention.check,
                                 self.swap.corpus())

    def _spawn(self, target: Callable[[threading.Event], None], name: str) -> None:
        thread = threading.Thread(target=target, args=(self._stopping,), name=name, daemon=True)
        thread.start()
        self._background.append(thread)

    def _serving_offsets(self) -> list[str]:
        """What this replica replays from after a restart: its index's offset and its last snapshot's."""
        offsets = [self.swap.pair.applied_offset] if self.swap.pair is not None else []
        if self.applier is not None and self.applier.snapshot_offset is not None:
            offsets.append(self.applier.snapshot_offset)
        if self.lexical is not None and self.lexical.applied_offset is not None:
            offsets.append(self.lexical.applied_offset)
        return offsets

    def _retain_log(self, stop: threading.Event) -> None:
        poll(self.holds.hold_and_trim, stop, every_s=self.settings.log_trim_interval_s, what="log retention",
             logger=log)

    def _trim_memory(self, stop: threading.Event) -> None:
        poll(release_free_memory, stop, every_s=self.settings.memory_trim_interval_s, what="memory trim", logger=log)

    async def stop(self) -> None:
        self._stopping.set()
        if self._loader is not None and not self._loader.done():
            await asyncio.wait([self._loader], timeout=60)
        for thread in self._background:
            await asyncio.to_thread(thread.join, 30)
        if self.applier is not None:
            await asyncio.to_thread(self.applier.stop)
        await self.searches.stop()
        if self.lexical is not None:
            self.lexical.close()
        if self._lexical_claim is not None:
            self._lexical_claim.close()
        self.tier.close()
        await self.async_redis.aclose()
        self.sync_redis.close()

    @property
    def ready(self) -> bool:
        """Model and index loaded, and the log replayed up to where it stood at start-up."""
        return self._ready

    def require_pair(self) -> ServingPair:
        if self.swap.pair is None:
            raise NotReady(self.load_error or "the model and index are still loading")
        return self.swap.pair

    # Search, documents, writes (serving/search.py, documents.py, writes.py) -----------------------
    def lexical_of(self, pair: ServingPair) -> LexicalSearch:
        """Where BM25 is searched: this replica's lexical index, or the sparse vectors of the pair's collection."""
        found = self.lexical if self.lexical is not None else self.tier.lexical_of(pair)  # (empty is falsy)
        if found is not None:
            return found
        raise InvalidInput("lexical and hybrid search are off on this service (XLING_LEXICAL=false)")

    def lexical_stats(self, pair: ServingPair) -> dict[str, Any] | None:
        """What /index/stats says of the lexical index: which engine, its partitions, how far it has applied the
        log; None when lexical search is off."""
        found = self.lexical if self.lexical is not None else self.tier.lexical_of(pair)
        if found is None:
            return None
        partitions = found.partitions
        return {"engine": found.kind, "documents": sum(partitions.values()), "partitions": partitions,
                "applied_offset": found.applied_offset or pair.applied_offset}

    def calibration_job(self) -> dict[str, Any] | None:
        """The job that will calibrate the served version's next means, with its progress, while one is queued or
        running (None otherwise, or with centring off)."""
        pair = self.swap.pair
        if pair is None or not self.settings.centering:
            return None
        return self.recalibration.pending(pair.version)

    @property
    def problem(self) -> str | None:
        """Why the model and index did not load, else the applier's last error (what /healthz shows)."""
        return self.load_error or (self.applier.last_error if self.applier else None)

    async def search(self, query: SearchQuery) -> SearchResult:
        return await self.searches.run(query)

    async def embed(self, texts: list[str], kind: TextKind, lang: str | None = None) -> Embedded:
        return await self.searches.embed(texts, kind, lang)

    async def documents(self, ids: Sequence[str]) -> list[StoredDoc | None]:
        return await self.documents_of_record.get_many(ids)

    async def document_count(self) -> int:
        return await self.documents_of_record.count()

    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]], wait_s: float | None) -> str:
        return await self.writes.upsert(docs, wait_s)

    async def delete(self, ids: Sequence[str], wait_s: float | None, *, must_exist: bool = False
                     ) -> tuple[str | None, list[str]]:
        return await self.writes.delete(ids, wait_s, must_exist=must_exist)

    async def applied(self, offset: str, wait_s: float) -> bool:
        return await self.writes.applied(offset, wait_s)

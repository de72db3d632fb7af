"""The engine: everything an api process holds (Redis clients, serving pair, applier, batcher), usable without HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aredis

from app.applier import Applier, Watermark
from app.batcher import MicroBatcher
from app.docstore import DocReader, DocStore, StoredDoc, offset_key
from app.errors import NotFound, NotReady, WriteTimeout
from app.indexing import ServingPair, build_index, catch_up, index_spec, load_encoder
from app.jobstore import Job, JobStore
from app.keys import RedisKeys
from app.logs import OutageNotice
from app.metrics import Metrics
from app.registry import Registry
from app.retention import LogRetention, LogTrimmed
from app.settings import Settings
from models.encoder import Encoder, TextKind
from models.resolve import ModelNotFoundError, ModelSource, resolve_model
from models.vector_index import IndexMismatchError, Neighbour, Scalar, SnapshotError, VectorIndex

log = logging.getLogger(__name__)
SWAP_RETRY_S = 30.0


@dataclass(frozen=True)
class SearchQuery:
    text: str
    k: int
    langs: tuple[str, ...] = ()
    where: tuple[tuple[str, Scalar], ...] = ()

    @property
    def filter_key(self) -> tuple[tuple[str, ...], str]:
        return tuple(sorted(self.langs)), json.dumps(sorted(self.where))


@dataclass(frozen=True)
class EmbedTexts:
    """An embeddings request: its texts ride the search micro-batcher, sharing encoder forwards."""

    texts: tuple[str, ...]
    kind: TextKind


@dataclass(frozen=True)
class Embedded:
    model_version: str
    vectors: np.ndarray  # (len(texts), dim) float32, unit norm
    tokens: list[int]  # tokens the model read per text


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    rank: int
    doc: StoredDoc


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    model_version: str


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if settings.redis_url is None:
            raise ValueError("Engine needs settings.redis_url (xling serve starts an embedded Redis when unset)")
        self.settings = settings
        self.metrics = metrics
        self.keys = RedisKeys(settings.key_prefix)
        self.async_redis = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.sync_redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.docs = DocStore(self.async_redis, self.keys)
        self.reader = DocReader(self.sync_redis, self.keys)
        self.watermark = Watermark()
        self.serving: ServingPair | None = None
        self.serving_since = 0.0  # unix time the serving pair took over
        self.model_source: ModelSource | None = None
        self.load_error: str | None = None
        self.applier: Applier | None = None
        self.batcher: MicroBatcher[SearchQuery | EmbedTexts, tuple[str, list[Neighbour]] | Embedded] = MicroBatcher(
            self._run_batch,
            max_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue=settings.search_queue_max,
            on_batch=metrics.search_batch_size.observe,
            name="search",
        )
        self._loader: asyncio.Task[None] | None = None
        self.registry = Registry(self.sync_redis, self.keys, settings.models_dir)
        self.jobs = JobStore(self.sync_redis, self.keys)
        self.swap_error: str | None = None
        self._failed_swap: tuple[str, float] | None = None  # (version, when)
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []
        self._celery: Any = None
        self._ready = False
        self.retention = LogRetention(self.sync_redis, self.keys)
        self.holder = f"api:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._pins: dict[str, str] = {}  # builds and replays in progress: name -> the offset they replay from
        self._pins_lock = threading.Lock()  # set by loader, swap and applier threads; read by the retention one

    # Life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Return at once; the model and index load in the background (/readyz tells when)."""
        self.batcher.start()
        self._loader = asyncio.create_task(self._load())
        self._spawn(self._sweep_lost_jobs, "job-sweep")
        self._spawn(self._retain_log, "log-retention")

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self._load_blocking)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model and index failed")
        finally:
            self._unpin("open")

    def _load_blocking(self) -> None:
        started = time.monotonic()
        source = self._startup_model()
        pair, from_snapshot = self._open_index(load_encoder(source, self.settings))
        self.model_source = source
        self.serving, self.serving_since = pair, time.time()
        self.applier = Applier(
            self.reader,
            self.require_pair,
            self.watermark,
            self.metrics,
            snapshot_dir=self.snapshot_dir,
            batch=self.settings.applier_batch,
            snapshot_every_entries=self.settings.snapshot_every_entries,
            snapshot_interval_s=self.settings.snapshot_interval_s,
            check_log=self.retention.check,
            on_log_trimmed=self._rebuild_serving,
        )
        self.applier.snapshot_offset = pair.applied_offset if from_snapshot else None
        replayed = self.applier.catch_up()
        if not from_snapshot or replayed:
            self.applier.snapshot()
        self.watermark.advance(pair.applied_offset)
        self.metrics.index_size.set(len(pair.index))
        self.applier.start()
        self._spawn(self._watch_active_model, "swap-watcher")
        self._ready = True
        log.info(
            "ready",
            extra={
                "model_version": pair.version,
                "model_origin": source.origin,
                "vectors": len(pair.index),
                "replayed_entries": replayed,
                "from_snapshot": from_snapshot,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def _startup_model(self) -> ModelSource:
        """The activated version; if it cannot be loaded, the configured model (and say why)."""
        activated = self.registry.active()
        if activated:
            try:
                return resolve_model(activated, self.settings.models_dir)
            except ModelNotFoundError as exc:
                self.swap_error = f"activated version {activated!r} cannot be loaded ({exc}); serving the default"
                log.error(self.swap_error)
        return self.default_source

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._background.append(thread)

    # Hot swap, api side (DESIGN §8) -------------------------------------------------------------
    def _watch_active_model(self) -> None:
        """Poll which version should serve; swap when it differs from the serving one."""
        outage = OutageNotice(log, "model watcher")
        while not self._stopping.wait(self.settings.swap_poll_s):
            wanted = None
            try:
                wanted = self.registry.active()
                outage.recovered()
                desired = wanted or self.default_version
                if desired == self.require_pair().version or self._recently_failed(desired):
                    continue
                self.swap_to(wanted or self.settings.retrieval_model)
                self.swap_error = self._failed_swap = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                outage.failed(exc)  # not a failed swap: which model should serve is unknown until Redis is back
            except Exception as exc:  # keep serving the old pair; say why in /healthz and /models/active
                desired = wanted or self.default_version
                self.swap_error = f"swap to {desired!r} failed: {type(exc).__name__}: {exc}"
                self._failed_swap = (desired, time.monotonic())
                log.exception("hot swap failed; still serving the previous model")

    def _recently_failed(self, version: str) -> bool:
        """A version whose swap failed is retried after SWAP_RETRY_S, not on every poll."""
        return (
            self._failed_swap is not None
            and self._failed_swap[0] == version
            and (time.monotonic() - self._failed_swap[1] < SWAP_RETRY_S)
        )

    @cached_property
    def default_source(self) -> ModelSource:
        """The configured model (XLING_RETRIEVAL_MODEL), resolved once: one hub lookup, one fallback warning."""
        return resolve_model(self.settings.retrieval_model, self.settings.models_dir)

    @property
    def default_version(self) -> str:
        """The version of the configured model, served when none is activated."""
        return self.default_source.version

    def swap_to(self, spec: str | None) -> None:
        """Load the new encoder and its index beside the serving pair, replay the log, swap one reference."""
        try:
            self._swap_to(spec)
        finally:
            self._unpin("open")  # also when the swap fails: a pin left behind would stop all trimming

    def _swap_to(self, spec: str | None) -> None:
        assert self.applier is not None
        started = time.monotonic()
        source = resolve_model(spec, self.settings.models_dir)
        pair, from_snapshot = self._open_index(load_encoder(source, self.settings))
        old = self._take_over(pair, pair.applied_offset if from_snapshot else None, source)
        self.metrics.swaps.inc()
        self.metrics.index_size.set(len(pair.index))
        log.info(
            "model swapped",
            extra={
                "from": old.version if old else None,
                "to": pair.version,
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    # Jobs ---------------------------------------------------------------------------------------
    def submit_job(self, job_type: str, params: dict[str, Any], retry_of: str | None = None) -> Job:
        from worker.celery_app import QUEUE, make_celery, task_name

        job = self.jobs.create(job_type, params, retry_of=retry_of)
        if self._celery is None:
            self._celery = make_celery(self.settings)
        try:
            self._celery.send_task(task_name(job_type), args=[job.id], queue=QUEUE)
        except Exception as exc:
            self.jobs.transition(job.id, "failed", error=f"could not queue the job: {exc}")
            raise
        self.metrics.jobs_submitted.labels(job_type).inc()
        return self.jobs.get(job.id)

    def live_workers(self) -> list[str]:
        return self.jobs.live_workers(self.settings.heartbeat_timeout_s)

    def _sweep_lost_jobs(self) -> None:
        outage = OutageNotice(log, "lost-job sweep")
        while not self._stopping.wait(self.settings.sweep_interval_s):
            try:
                for job_id in self.jobs.sweep_lost(self.settings.heartbeat_timeout_s):
                    log.warning("job failed: worker lost", extra={"job_id": job_id})
                outage.recovered()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                outage.failed(exc)
            except Exception:
                log.exception("lost-job sweep failed")

    def snapshot_dir(self, version: str) -> Path:
        return self.settings.indexes_dir / version

    def _open_index(self, encoder: Encoder) -> tuple[ServingPair, bool]:
        """The version's snapshot if there is a valid one, else a full build from the documents.

        Pins the offset it replays from as "open" (the caller unpins once the pair serves)."""
        folder = self.snapshot_dir(encoder.version)
        try:
            index, offset = VectorIndex.load(folder, encoder.version, encoder.dim, index_spec(self.settings))
            self._pin("open", offset)
            self.retention.check(offset)
            log.info("snapshot loaded", extra={"path": str(folder), "vectors": len(index), "offset": offset})
            return ServingPair(encoder, index, offset), True
        except IndexMismatchError as exc:
            log.error("snapshot refused, rebuilding from documents: %s", exc)
        except LogTrimmed as exc:
            log.warning("snapshot in %s is older than the doc log (%s); encoding all documents", folder, exc)
        except SnapshotError as exc:
            log.info("no usable snapshot (%s); encoding all documents", exc)
        self._pin("open", self.reader.last_offset())  # build_index replays from an offset at least this new
        return build_index(self.reader, encoder, index_spec(self.settings), chunk=2_048), False

    # Doc-log retention (app/retention.py) -------------------------------------------------------
    def _pin(self, name: str, offset: str) -> None:
        """Keep the log from `offset` on while a build or replay runs; told to Redis at once."""
        with self._pins_lock:
            self._pins[name] = offset
        self._hold_log()

    def _unpin(self, name: str) -> None:
        with self._pins_lock:
            self._pins.pop(name, None)

    def _retained_offset(self) -> str | None:
        """The oldest offset this replica may replay from: its index, its last snapshot, builds in progress."""
        with self._pins_lock:
            offsets = list(self._pins.values())
        if self.serving is not None:
            offsets.append(self.serving.applied_offset)
        if self.applier is not None and self.applier.snapshot_offset is not None:
            offsets.append(self.applier.snapshot_offset)
        return min(offsets, key=offset_key) if offsets else None

    def _hold_log(self) -> None:
        offset = self._retained_offset()
        if offset is not None:
            self.retention.hold(self.holder, offset, self.settings.log_hold_ttl_s)

    def _retain_log(self) -> None:
        outage = OutageNotice(log, "log retention")
        while not self._stopping.wait(self.settings.log_trim_interval_s):
            try:
                self._hold_log()
                self.retention.trim()
                outage.recovered()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                outage.failed(exc)
            except Exception:
                log.exception("log retention failed")
        # The hold is not released at stop: it lapses after log_hold_ttl_s, so a restart within that time
        # replays from its snapshot instead of encoding every document.

    def _rebuild_serving(self) -> None:
        """This replica fell behind the trimmed log (away longer than its hold lasted): rebuild its index from
        the document hash with the same encoder, replay, swap. Searches go on against the old index meanwhile."""
        assert self.applier is not None
        pair = self.require_pair()
        log.warning("the doc log was trimmed past this replica's offset %s; rebuilding its index from the documents",
                    pair.applied_offset)  # fmt: skip
        self._pin("rebuild", self.reader.last_offset())
        try:
            self._take_over(
                build_index(self.reader, pair.encoder, index_spec(self.settings), chunk=2_048), snapshot_offset=None
            )
        finally:
            self._unpin("rebuild")
        self.applier.snapshot()

    def _take_over(
        self, pair: ServingPair, snapshot_offset: str | None, source: ModelSource | None = None
    ) -> ServingPair | None:
        """Replay the log into `pair` while the serving one goes on, then swap under the applier lock (the
        applier is between steps: nothing applies to the old pair now). Returns the pair it replaced."""
        assert self.applier is not None
        catch_up(self.reader, pair, self.settings.applier_batch)  # most of the replay, outside the lock
        with self.applier.lock:
            catch_up(self.reader, pair, self.settings.applier_batch)
            old, self.serving = self.serving, pair
            if source is not None:  # a new model; a rebuild keeps the model and its serving_since
                self.model_source, self.serving_since = source, time.time()
            self.applier.snapshot_offset = snapshot_offset
            self.watermark.advance(pair.applied_offset)
        return old

    async def stop(self) -> None:
        self._stopping.set()
        if self._loader is not None and not self._loader.done():
            await asyncio.wait([self._loader], timeout=60)
        for thread in self._background:
            await asyncio.to_thread(thread.join, 30)
        if self.applier is not None:
            await asyncio.to_thread(self.applier.stop)
        await self.batcher.stop()
        await self.async_redis.aclose()
        self.sync_redis.close()

    @property
    def ready(self) -> bool:
        """Model and index loaded, and the log replayed up to where it stood at start-up."""
        return self._ready

    def require_pair(self) -> ServingPair:
        if self.serving is None:
            raise NotReady(self.load_error or "the model and index are still loading")
        return self.serving

    # Search -------------------------------------------------------------------------------------
    async def search(self, query: SearchQuery) -> SearchResult:
        self.require_pair()
        answer = await self.batcher.submit(query)
        assert isinstance(answer, tuple)
        version, neighbours = answer
        docs = await self.docs.get_many([n.ext_id for n in neighbours])
        # A document deleted after the vector search is dropped rather than shown without text.
        kept = [(n, doc) for n, doc in zip(neighbours, docs, strict=True) if doc is not None]
        hits = [SearchHit(n.ext_id, n.score, rank, doc) for rank, (n, doc) in enumerate(kept, start=1)]
        return SearchResult(hits, version)

    async def embed(self, texts: list[str], kind: TextKind) -> Embedded:
        self.require_pair()
        answer = await self.batcher.submit(EmbedTexts(tuple(texts), kind))
        assert isinstance(answer, Embedded)
        return answer

    def _run_batch(self, items: list[SearchQuery | EmbedTexts]) -> list[tuple[str, list[Neighbour]] | Embedded]:
        """Searches and embedding requests that arrived together share the encoder's forwards."""
        pair = self.require_pair()  # read once: a swap mid-batch cannot mix two models
        flat: list[tuple[TextKind, str]] = []  # every text of the batch, with its kind
        spans: list[slice] = []  # each item's rows in `flat`
        for item in items:
            start = len(flat)
            if isinstance(item, SearchQuery):
                flat.append(("query", item.text))
            else:
                flat.extend((item.kind, text) for text in item.texts)
            spans.append(slice(start, len(flat)))
        vectors = np.empty((len(flat), pair.encoder.dim), dtype=np.float32)
        tokens = [0] * len(flat)
        for kind in ("query", "passage"):
            rows = [n for n, (k, _) in enumerate(flat) if k == kind]
            if rows:
                vectors[rows], counts = pair.encoder.encode_counted([flat[n][1] for n in rows], kind)
                for row, count in zip(rows, counts, strict=True):
                    tokens[row] = count
        searches = [i for i, item in enumerate(items) if isinstance(item, SearchQuery)]
        queries = [item for item in items if isinstance(item, SearchQuery)]
        found = self._search_vectors(pair, queries, vectors[[spans[i].start for i in searches]]) if queries else []
        neighbours = dict(zip(searches, found, strict=True))
        return [
            (pair.version, neighbours[i])
            if i in neighbours
            else Embedded(pair.version, vectors[spans[i]], tokens[spans[i]])
            for i in range(len(items))
        ]

    @staticmethod
    def _search_vectors(pair: ServingPair, queries: list[SearchQuery], vectors: np.ndarray) -> list[list[Neighbour]]:
        """One FAISS search per distinct filter among the queries."""
        groups: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for row, query in enumerate(queries):
            groups.setdefault(query.filter_key, []).append(row)
        results: list[list[Neighbour]] = [[] for _ in queries]
        for rows in groups.values():
            first = queries[rows[0]]
            found = pair.index.search(vectors[rows], max(queries[r].k for r in rows), first.langs, dict(first.where))
            for row, neighbours in zip(rows, found, strict=True):
                results[row] = neighbours[: queries[row].k]
        return results

    # Writes -------------------------------------------------------------------------------------
    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]]) -> str:
        offset = await self.docs.upsert(docs)
        await self._await_applied(offset)
        return offset

    async def delete(self, ids: Sequence[str], *, must_exist: bool = False) -> list[str]:
        offset, missing = await self.docs.delete(ids)
        if must_exist and missing:
            raise NotFound(f"no document with id {missing[0]!r}")
        if offset is not None:
            await self._await_applied(offset)
        return missing

    async def _await_applied(self, offset: str) -> None:
        """Read-your-writes: return once this process's index holds the write (it is durable already)."""
        if not await self.watermark.wait_for(offset, self.settings.write_timeout_s):
            state = "the index is still loading" if not self.ready else "the applier is behind"
            raise WriteTimeout(
                f"write stored durably (log offset {offset}) but not yet searchable after "
                f"{self.settings.write_timeout_s:g}s: {state}"
            )

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from xling.models.encoder import TextKind
from xling.models.files import claim_folder
from xling.models.index.fusion import FusedHit, SearchMode, fuse_rrf, fuse_weighted
from xling.models.index.lexical import LexicalIndex, LexicalSearch
from xling.models.index.vector_index import Neighbour, Scalar
from xling.serving.applier import Applier, Watermark
from xling.serving.batcher import MicroBatcher
from xling.serving.holds import LogHolds
from xling.serving.job_queue import JobQueue
from xling.serving.memory import limit_kernel_cache, release_free_memory
from xling.serving.metrics import Metrics
from xling.serving.swap import HotSwap
from xling.state.centering import (
    TextLanguage,
    calibrate_corpus,
    centering_folder,
    document_languages,
    query_language,
)
from xling.state.connections import async_redis_client, redis_client
from xling.state.docstore import DocReader, DocStore, ReplicaAcks, StoredDoc
from xling.state.errors import InvalidInput, NotFound, NotReady, WriteTimeout
from xling.state.indexing import ServingPair, catch_up_lexical
from xling.state.jobs import ReindexJob
from xling.state.jobstore import JobNotFound, JobStore
from xling.state.keys import RedisKeys
from xling.state.polling import poll
from xling.state.registry import Registry
from xling.state.retention import LogRetention
from xling.state.settings import Settings

if TYPE_CHECKING:
    from xling.state.qdrant_store import QdrantStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchQuery:
    text: str
    k: int
    langs: tuple[str, ...] = ()
    where: tuple[tuple[str, Scalar], ...] = ()
    query_lang: str | None = None  # the query's own language, when the caller knows it (centring)
    mode: SearchMode = "dense"

    @property
    def filter_key(self) -> tuple[tuple[str, ...], str]:
        return tuple(sorted(self.langs)), json.dumps(sorted(self.where))


@dataclass(frozen=True)
class EmbedTexts:
    """An embeddings request: its texts ride the search micro-batcher, sharing encoder forwards."""

    texts: tuple[str, ...]
    kind: TextKind
    lang: str | None = None  # the texts' language when the caller says it (routing and centring)


@dataclass(frozen=True)
class Embedded:
    model_version: str
    vectors: np.ndarray  # (len(texts), dim) float32, unit norm
    tokens: list[int]  # tokens the model read per text
    centering_id: str | None = None  # the means the vectors were centred with (None: raw)
    adapters: list[str | None] = field(default_factory=list)  # the adapter that encoded each text (None: shared)


@dataclass(frozen=True)
class DenseAnswer:
    """A query's dense neighbours, with what a hybrid search needs to score more documents on the same pair."""

    pair: ServingPair
    neighbours: list[Neighbour]
    vector: np.ndarray  # the query's vector, centred as the index's are


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    rank: int
    doc: StoredDoc
    ranks: dict[str, int] = field(default_factory=dict)  # ranking (dense, lexical) -> rank, for those that found it


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    model_version: str


class Engine:
    """Lifecycle, search and writes; the hot swap (`swap`), the log holds (`holds`) and the job queue (`job_queue`)
    are parts of their own that it starts and stops."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if not settings.redis_configured:
            raise ValueError("Engine needs a Redis (xling serve starts an embedded one when none is configured)")
        self.settings = settings
        self.metrics = metrics
        self.keys = RedisKeys(settings.key_prefix)
        self.async_redis = async_redis_client(settings)
        self.sync_redis = redis_client(settings)
        self.docs = DocStore(
            self.async_redis, self.keys, ReplicaAcks(settings.redis_wait_replicas, settings.redis_wait_timeout_ms),
            in_hash=not settings.documents_in_qdrant,
        )
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
        self.qdrant = self._qdrant_store() if settings.index == "qdrant" else None
        self.swap = HotSwap(settings, self.registry, self.reader, self.holds, self.watermark, metrics, self.qdrant)
        self.swap.on_recalibrate = self._queue_recalibration
        self.load_error: str | None = None
        self.applier: Applier | None = None
        self.lexical: LexicalIndex | None = None  # this replica's BM25 index (settings.lexical_in_tantivy)
        self._lexical_claim: IO[bytes] | None = None  # holds its folder while this process runs
        self.fusion = settings.fusion_config()
        self.batcher: MicroBatcher[SearchQuery | EmbedTexts, DenseAnswer | Embedded] = MicroBatcher(
            self._run_batch,
            max_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue=settings.search_queue_max,
            on_batch=metrics.search_batch_size.observe,
            name="search",
        )
        limit_kernel_cache(settings.kernel_cache_capacity)  # before the first encode
        self._loader: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._background: list[threading.Thread] = []
        self._ready = False

    # Life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Return at once; the model and index load in the background (/readyz tells when)."""
        self.batcher.start()
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
        lexical_replayed = self._open_lexical() if self.settings.lexical_in_tantivy else 0
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
            shared=self.qdrant,
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
        await self.batcher.stop()
        if self.lexical is not None:
            self.lexical.close()
        if self._lexical_claim is not None:
            self._lexical_claim.close()
        if self.qdrant is not None:
            self.qdrant.close()  # local mode: frees the folder's lock for the next process
        await self.async_redis.aclose()
        self.sync_redis.close()

    def _qdrant_store(self) -> QdrantStore:
        from xling.state.qdrant_store import QdrantStore  # qdrant-client is imported only where it is used

        return QdrantStore(self.settings, self.sync_redis, self.keys, holder=self.holds.holder)

    @property
    def ready(self) -> bool:
        """Model and index loaded, and the log replayed up to where it stood at start-up."""
        return self._ready

    def require_pair(self) -> ServingPair:
        if self.swap.pair is None:
            raise NotReady(self.load_error or "the model and index are still loading")
        return self.swap.pair

    # Search -------------------------------------------------------------------------------------
    async def search(self, query: SearchQuery) -> SearchResult:
        pair = self.require_pair()
        if query.mode == "dense":
            answer = await self._dense(query)
            ranked = [FusedHit(n.ext_id, n.score, {"dense": rank}) for rank, n in enumerate(answer.neighbours, 1)]
            pair = answer.pair
        elif query.mode == "lexical":
            ranked = await asyncio.to_thread(self._lexical_ranking, query, pair)
        else:
            answer = await self._dense(query)
            ranked, pair = await asyncio.to_thread(self._fuse, query, answer), answer.pair
        version = pair.version
        docs = await self.documents([hit.ext_id for hit in ranked], pair)
        # A document deleted after the index search is dropped rather than shown without text.
        kept = [(hit, doc) for hit, doc in zip(ranked, docs, strict=True) if doc is not None]
        hits = [SearchHit(hit.ext_id, hit.score, rank, doc, hit.ranks) for rank, (hit, doc) in enumerate(kept, 1)]
        return SearchResult(hits, version)

    async def _dense(self, query: SearchQuery) -> DenseAnswer:
        answer = await self.batcher.submit(query)
        assert isinstance(answer, DenseAnswer)
        return answer

    def lexical_of(self, pair: ServingPair) -> LexicalSearch:
        """Where BM25 is searched: this replica's tantivy index, or the sparse vectors of the pair's collection."""
        if self.lexical is not None:
            return self.lexical
        if self.settings.lexical_in_qdrant:
            from xling.models.index.qdrant_lexical import QdrantLexical  # imports qdrant-client

            assert self.qdrant is not None  # lexical_in_qdrant implies XLING_INDEX=qdrant
            return QdrantLexical(self.qdrant.collection_of(pair))
        raise InvalidInput("lexical and hybrid search are off on this service (XLING_LEXICAL=false)")

    def _lexical_ranking(self, query: SearchQuery, pair: ServingPair) -> list[FusedHit]:
        found = self.lexical_of(pair).search(query.text, query.k, query.langs, dict(query.where))
        return [FusedHit(hit.ext_id, hit.score, {"lexical": rank}) for rank, hit in enumerate(found, 1)]

    def _fuse(self, query: SearchQuery, answer: DenseAnswer) -> list[FusedHit]:
        """The exact top-k of the fused ranking among the filtered documents (xling.models.index.fusion)."""
        lexical, pair, where = self.lexical_of(answer.pair), answer.pair, dict(query.where)

        def dense_top(depth: int) -> list[tuple[str, float]]:
            found = answer.neighbours
            if depth > len(found) and len(found) >= self._dense_depth(query):  # the batch fetched too few
                found = pair.index.search(answer.vector[None, :], depth, query.langs, where)[0]
            return [(n.ext_id, n.score) for n in found[:depth]]

        if self.fusion.method == "rrf":
            ranked = lexical.search(query.text, self.fusion.window, query.langs, where)
            lexical_ranking = [(hit.ext_id, hit.score) for hit in ranked]
            return fuse_rrf(dense_top(self.fusion.window), lexical_ranking, query.k, self.fusion)
        scaled = lexical.scaled(query.text, query.langs, where, per_language=self.fusion.normalise == "language")
        return fuse_weighted(
            query.k, self.fusion, dense_top, scaled.top,
            dense_of=lambda ids: pair.index.scores(answer.vector, ids), lexical_of=scaled.of,
        )

    def _dense_depth(self, query: SearchQuery) -> int:
        """How many neighbours the micro-batch fetches: k, or a fused ranking's first window."""
        return query.k if query.mode == "dense" else max(query.k, self.fusion.window)

    async def embed(self, texts: list[str], kind: TextKind, lang: str | None = None) -> Embedded:
        self.require_pair()
        answer = await self.batcher.submit(EmbedTexts(tuple(texts), kind, lang))
        assert isinstance(answer, Embedded)
        return answer

    def _run_batch(self, items: list[SearchQuery | EmbedTexts]) -> list[DenseAnswer | Embedded]:
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
        languages = self._languages(pair, items)
        vectors = np.empty((len(flat), pair.encoder.dim), dtype=np.float32)
        tokens = [0] * len(flat)
        for kind in ("query", "passage"):
            rows = [n for n, (k, _) in enumerate(flat) if k == kind]
            if rows:
                # One forward sequence per adapter among these rows (Encoder.route).
                vectors[rows], counts = pair.encoder.encode_counted(
                    [flat[n][1] for n in rows], kind, [languages[n].adapter for n in rows]
                )
                for row, count in zip(rows, counts, strict=True):
                    tokens[row] = count
        if pair.centering is not None:
            self._centre(pair, flat, languages, vectors)
        searches = [i for i, item in enumerate(items) if isinstance(item, SearchQuery)]
        queries = [item for item in items if isinstance(item, SearchQuery)]
        query_vectors = vectors[[spans[i].start for i in searches]]
        found = self._search_vectors(pair, queries, query_vectors) if queries else []
        neighbours = dict(zip(searches, zip(found, query_vectors, strict=True), strict=True))
        return [
            DenseAnswer(pair, *neighbours[i])
            if i in neighbours
            else Embedded(pair.version, vectors[spans[i]], tokens[spans[i]],
                          pair.centering.id if pair.centering else None,
                          [language.adapter for language in languages[spans[i]]])
            for i in range(len(items))
        ]

    @staticmethod
    def _languages(pair: ServingPair, items: list[SearchQuery | EmbedTexts]) -> list[TextLanguage]:
        """Each text's adapter and centring language, row by row as `_run_batch` flattens them: a query's from
        its given language or one detection (state.centering.query_language); a passage's as a document's (its
        given language, else the detected one)."""
        encoder, centering = pair.encoder, pair.centering
        found: list[TextLanguage] = []
        for item in items:
            if isinstance(item, SearchQuery):
                found.append(query_language(item.text, item.query_lang, encoder, centering))
            elif item.kind == "query":
                found.extend(query_language(text, item.lang, encoder, centering) for text in item.texts)
            elif encoder.adapters or centering is not None:
                langs = document_languages([StoredDoc(text, item.lang) for text in item.texts], encoder.detector)
                found.extend(TextLanguage(encoder.adapter_for(lang), lang) for lang in langs)
            else:
                found.extend(TextLanguage(None, None) for _ in item.texts)
        return found

    @staticmethod
    def _centre(pair: ServingPair, flat: list[tuple[TextKind, str]], languages: list[TextLanguage],
                vectors: np.ndarray) -> None:
        """In place: each text's vector centred as the index's are. A query on the document mean of its language,
        else on the global query mean; a passage as a document."""
        centering = pair.centering
        assert centering is not None
        for kind in ("query", "passage"):
            rows = [n for n, (k, _) in enumerate(flat) if k == kind]
            langs = [languages[n].centre for n in rows]
            if rows:
                vectors[rows] = (centering.queries if kind == "query" else centering.documents)(vectors[rows], langs)

    def _queue_recalibration(self, version: str, reasons: list[str]) -> None:
        """One `reindex` job with recalibration per version at a time, whichever replica asks first: none while
        the last one is queued or running (a large corpus takes a while), and at most one every
        `centering_requeue_s` (a failed one is not retried on every poll)."""
        last_job, throttle = self.keys.recalibration(version), self.keys.recalibration_throttle(version)
        if self.sync_redis.exists(throttle):
            return
        previous: Any = self.sync_redis.get(last_job)
        if previous:
            try:
                if self.jobs.get(str(previous)).status in ("queued", "running"):
                    return
            except JobNotFound:
                pass  # deleted since: ask again
        if not self.sync_redis.set(throttle, "1", nx=True, ex=self.settings.centering_requeue_s):
            return  # another replica claimed it a moment ago
        if self.settings.qdrant_local and self.settings.documents_in_qdrant:
            self._recalibrate_here(version, reasons)
            return
        job = self.job_queue.submit(ReindexJob(version=version, recalibrate=True))
        self.sync_redis.set(last_job, job.id)
        log.warning("centring: recalibration queued", extra={"version": version, "job_id": job.id, "reasons": reasons})

    def _recalibrate_here(self, version: str, reasons: list[str]) -> None:
        """Documents in the api's local-mode folder, where no worker may read them: this api calibrates new
        means itself, and the swap watcher then moves to a collection built with them."""
        pair = self.require_pair()
        if pair.version != version:
            return
        centering = calibrate_corpus(self.swap.corpus(), pair.encoder, self.settings)
        if centering is not None:
            centering.save(centering_folder(self.settings, version))
            log.warning("centring: recalibrated by the api (documents in Qdrant local mode)",
                        extra={"version": version, "centering": centering.id, "reasons": reasons})

    def _search_vectors(
        self, pair: ServingPair, queries: list[SearchQuery], vectors: np.ndarray
    ) -> list[list[Neighbour]]:
        """One FAISS search per distinct filter among the queries."""
        groups: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for row, query in enumerate(queries):
            groups.setdefault(query.filter_key, []).append(row)
        results: list[list[Neighbour]] = [[] for _ in queries]
        for rows in groups.values():
            first = queries[rows[0]]
            depth = max(self._dense_depth(queries[r]) for r in rows)
            found = pair.index.search(vectors[rows], depth, first.langs, dict(first.where))
            for row, neighbours in zip(rows, found, strict=True):
                results[row] = neighbours[: self._dense_depth(queries[row])]
        return results

    # Documents ----------------------------------------------------------------------------------
    async def documents(self, ids: Sequence[str], pair: ServingPair | None = None) -> list[StoredDoc | None]:
        """The stored documents of these ids, in order (None: no such document): the hash's, or with documents
        in Qdrant the payload of `pair`'s collection (by default the serving one)."""
        if not self.settings.documents_in_qdrant:
            return await self.docs.get_many(ids)
        assert self.qdrant is not None  # documents in Qdrant imply XLING_INDEX=qdrant
        corpus = self.qdrant.documents_of(pair or self.require_pair())
        found = await asyncio.to_thread(corpus.get_many, ids)
        return [found.get(doc_id) for doc_id in ids]

    async def document_count(self) -> int:
        if not self.settings.documents_in_qdrant:
            return await self.docs.count()
        return await asyncio.to_thread(len, self.require_pair().index)

    # Writes -------------------------------------------------------------------------------------
    async def upsert(self, docs: Sequence[tuple[str, StoredDoc]]) -> str:
        offset = await self.docs.upsert(docs)
        await self._await_applied(offset)
        return offset

    async def delete(self, ids: Sequence[str], *, must_exist: bool = False) -> list[str]:
        if self.settings.documents_in_qdrant:  # no hash to say which exist: the serving collection does
            found = await self.documents(ids)
            missing = [doc_id for doc_id, doc in zip(ids, found, strict=True) if doc is None]
            offset, _ = await self.docs.delete([doc_id for doc_id in ids if doc_id not in missing])
        else:
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

"""Search, and embeddings on the same encoder forwards: queries and embedding requests ride one micro-batcher;
each batch's texts are routed to their adapters, encoded, centred as the index's vectors are, and searched with
one FAISS call per filter; a lexical or hybrid search then ranks (xling.models.index.fusion) on the same serving
pair, and the hits carry their stored documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xling.models.encoder import TextKind
from xling.models.index.fusion import FusedHit, SearchMode
from xling.models.index.lexical import LexicalSearch
from xling.models.index.lexical_ranking import merged_top
from xling.models.index.neighbours import Neighbours
from xling.models.index.vector_index import Scalar
from xling.serving.batcher import MicroBatcher
from xling.serving.documents import Documents
from xling.serving.hybrid import DenseAnswer, HybridFusion, by_filter
from xling.serving.metrics import Metrics
from xling.state.centering import TextLanguage, document_languages, query_language
from xling.state.docstore import StoredDoc
from xling.state.indexing import ServingPair
from xling.state.settings import Settings


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


class Search:
    """The search path of one api process: `pair` is the serving pair of the moment (raises NotReady before
    there is one), `lexical` where a pair's BM25 is searched; `scans_every_vector`: the index tier's search reads
    every vector whatever the depth (flat), so hybrid queries fetch their dense side DEEP_FETCH times deeper at
    once; `lookups_are_round_trips`: fusion's cosine lookups by id go to another service (Qdrant), so a batch
    gathers them into one call (xling.serving.hybrid)."""

    def __init__(self, settings: Settings, metrics: Metrics, pair: Callable[[], ServingPair],
                 lexical: Callable[[ServingPair], LexicalSearch], documents: Documents,
                 scans_every_vector: bool = False, lookups_are_round_trips: bool = False) -> None:
        self.settings = settings
        self.pair = pair
        self.lexical = lexical
        self.documents = documents
        self.hybrid = HybridFusion(settings.fusion_config(), lexical, scans_every_vector, lookups_are_round_trips)
        self.batcher: MicroBatcher[SearchQuery | EmbedTexts, DenseAnswer | Embedded] = MicroBatcher(
            self._run_batch,
            max_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue=settings.search_queue_max,
            on_batch=metrics.search_batch_size.observe,
            name="search",
        )
        # Lexical searches need no encoder: they batch on their own, so that those which arrived together cost
        # the index one sparse product per partition.
        self.lexical_batcher: MicroBatcher[SearchQuery, tuple[ServingPair, list[FusedHit]]] = MicroBatcher(
            self._run_lexical_batch,
            max_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            max_queue=settings.search_queue_max,
            name="lexical",
        )

    def start(self) -> None:
        self.batcher.start()
        self.lexical_batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.lexical_batcher.stop()

    async def run(self, query: SearchQuery) -> SearchResult:
        pair = self.pair()
        if query.mode == "dense":
            answer = await self._dense(query)
            ranked = [FusedHit(n.ext_id, n.score, {"dense": rank}) for rank, n in enumerate(answer.neighbours, 1)]
            pair = answer.pair
        elif query.mode == "lexical":
            pair, ranked = await self.lexical_batcher.submit(query)
        else:
            answer = await self._dense(query)
            if answer.fused is None:  # the batch fuses every hybrid query unless lexical search is off
                self.lexical(answer.pair)  # which raises InvalidInput, the answer to this query
            assert answer.fused is not None
            ranked, pair = answer.fused, answer.pair
        version = pair.version
        docs = await self.documents.get_many([hit.ext_id for hit in ranked], pair)
        # A document deleted after the index search is dropped rather than shown without text.
        kept = [(hit, doc) for hit, doc in zip(ranked, docs, strict=True) if doc is not None]
        hits = [SearchHit(hit.ext_id, hit.score, rank, doc, hit.ranks) for rank, (hit, doc) in enumerate(kept, 1)]
        return SearchResult(hits, version)

    async def _dense(self, query: SearchQuery) -> DenseAnswer:
        answer = await self.batcher.submit(query)
        assert isinstance(answer, DenseAnswer)
        return answer

    def _run_lexical_batch(self, queries: list[SearchQuery]) -> list[tuple[ServingPair, list[FusedHit]]]:
        """BM25 rankings of the lexical searches that arrived together: one call to the index per filter, each
        query's top k merged from every partition's (best first, ties by id)."""
        pair = self.pair()  # read once: the whole batch is answered on one pair
        lexical = self.lexical(pair)
        ranked: list[list[FusedHit]] = [[] for _ in queries]
        for rows in by_filter(queries):
            first = queries[rows[0]]
            texts, depth = [queries[row].text for row in rows], max(queries[row].k for row in rows)
            answers = lexical.answer_many(texts, depth, first.langs, dict(first.where), [() for _ in rows])
            for row, answer in zip(rows, answers, strict=True):
                top = merged_top(answer.tops, queries[row].k, lambda _: 1.0)
                ranked[row] = [FusedHit(ext_id, score, {"lexical": rank})
                               for rank, (ext_id, score) in enumerate(top, 1)]
        return [(pair, found) for found in ranked]

    async def embed(self, texts: list[str], kind: TextKind, lang: str | None = None) -> Embedded:
        self.pair()  # NotReady before the batcher is asked
        answer = await self.batcher.submit(EmbedTexts(tuple(texts), kind, lang))
        assert isinstance(answer, Embedded)
        return answer

    def _run_batch(self, items: list[SearchQuery | EmbedTexts]) -> list[DenseAnswer | Embedded]:
        """Searches and embedding requests that arrived together share the encoder's forwards."""
        pair = self.pair()  # read once: a swap mid-batch cannot mix two models
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
        fused = self.hybrid.fuse_batch(pair, queries, found, query_vectors)
        neighbours = {i: (found[row], query_vectors[row], fused.get(row)) for row, i in enumerate(searches)}
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

    def _search_vectors(
        self, pair: ServingPair, queries: list[SearchQuery], vectors: np.ndarray
    ) -> list[Neighbours]:
        """One FAISS search per distinct filter among the queries."""
        results = [Neighbours.of([]) for _ in queries]
        for rows in by_filter(queries):
            first = queries[rows[0]]
            depth = max(self.hybrid.fetch_depth(queries[r]) for r in rows)
            found = pair.index.search(vectors[rows], depth, first.langs, dict(first.where))
            for row, neighbours in zip(rows, found, strict=True):
                results[row] = neighbours[: self.hybrid.fetch_depth(queries[row])]
        return results

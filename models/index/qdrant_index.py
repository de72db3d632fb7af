"""The vector index in Qdrant: one collection per model version, read by serving through an alias.

The same operations as `VectorIndex` (upsert, remove, filtered top-k search, scores), so the engine and the
conformance tests treat every index kind alike; what differs is where the vectors live. The code is written
for a Qdrant server (`QdrantClient(url=...)`); the tests run it on the client's embedded local mode, which has
the same API and searches exhaustively.

- Point ids: a document id is any string, a Qdrant point id a UUID or an integer, so each id maps to
  UUIDv5(`ID_NAMESPACE`, id), the same on every replica; the real id travels in the payload (`id`).
- Payload: `id`, `lang`, `meta` (the metadata as given), `terms` (one keyword per metadata pair, the same
  `filter_key` strings the FAISS postings use, so `where={"year": 1}` matches exactly what it matches there:
  1 is not 1.0 is not true) and, when given, `text`. `lang` and `terms` carry keyword payload indexes.
- Exact top-k: a filtered search whose filter matches at most `exact_filter_max` points runs in Qdrant's exact
  mode (a scan of those points); a larger filter, and an unfiltered search, use Qdrant's filterable HNSW,
  whose recall is a property of the collection's HNSW settings (on the embedded local mode, every search is
  exact). `exact=True` makes every search exact.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from xling.models.index.lexical import LexicalDoc
from xling.models.index.neighbours import Neighbours
from xling.models.index.slots import DocEntry, Scalar, filter_key
from xling.models.index.sparse import Changes, LengthTally, leaving, sparse_documents

ID_NAMESPACE = uuid.UUID("6c1c1d52-7a43-5d7e-9f55-0c7a0b6f3f20")  # fixed forever: point ids depend on it
SCROLL_PAGE = 1_024
STORED = ["id", "lang", "meta", "text"]  # the payload fields that make up a document
DENSE, SPARSE = "", "bm25"  # the vectors' names: the dense one unnamed (Qdrant's default), BM25 (qdrant_lexical.py)


def point_id(ext_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, ext_id))


def collection_name(prefix: str, model_version: str) -> str:
    """The collection of one model version: `<prefix>-<version>`, with characters Qdrant may refuse replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{prefix}-{model_version}")


def terms(metadata: dict[str, Scalar]) -> list[str]:
    return [filter_key(key, value) for key, value in metadata.items()]


def create_collection(
    client: QdrantClient, name: str, dim: int, *, on_disk: bool = False, int8: bool = False, lexical: bool = False,
    metadata: dict[str, Any] | None = None,
) -> None:
    """A collection for unit vectors (dot product = cosine), with keyword indexes on `lang` and `terms`.
    `on_disk`: vectors and payload on disk (memory-mapped); `int8`: scalar-quantised copies kept in RAM for the
    search, the full vectors rescoring the best; `lexical`: a BM25 sparse vector beside each dense one, its IDF
    computed by Qdrant (the IDF modifier), and a keyword index on the document's partition `part`. `metadata`:
    kept with the collection's configuration (who made it, and when)."""
    client.create_collection(
        name,
        vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.DOT, on_disk=on_disk),
        sparse_vectors_config={SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)} if lexical else None,
        on_disk_payload=on_disk,
        metadata=metadata,
        quantization_config=(
            qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, always_ram=True))
            if int8 else None
        ),
    )
    with warnings.catch_warnings():
        # The embedded local mode says its payload indexes do nothing (it scans); a server uses them.
        warnings.filterwarnings("ignore", message="Payload indexes have no effect")
        for field in ("lang", "terms", *(("part",) if lexical else ())):
            client.create_payload_index(name, field, qm.PayloadSchemaType.KEYWORD)


def has_lexical(client: QdrantClient, name: str) -> bool:
    """Whether the collection carries BM25 vectors (one created before they were written carries none)."""
    return SPARSE in (client.get_collection(name).config.params.sparse_vectors or {})


def payload_conditions(langs: Sequence[str] | None, where: dict[str, Scalar] | None) -> list[Any]:
    """A search's filter as payload conditions: any of `langs`, and every `where` pair."""
    conditions: list[Any] = []
    if langs:
        conditions.append(qm.FieldCondition(key="lang", match=qm.MatchAny(any=list(dict.fromkeys(langs)))))
    for term in terms(where or {}):
        conditions.append(qm.FieldCondition(key="terms", match=qm.MatchValue(value=term)))
    return conditions


def point_alias(client: QdrantClient, alias: str, collection: str) -> None:
    """Move `alias` to `collection` in one step: a search by the alias sees the old collection or the new one."""
    operations: list[Any] = []
    if any(a.alias_name == alias for a in client.get_aliases().aliases):
        operations.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
    create = qm.CreateAlias(collection_name=collection, alias_name=alias)
    operations.append(qm.CreateAliasOperation(create_alias=create))
    client.update_collection_aliases(operations)


def alias_target(client: QdrantClient, alias: str) -> str | None:
    return next((a.collection_name for a in client.get_aliases().aliases if a.alias_name == alias), None)


class QdrantIndex:
    """Unit vectors under string ids in one Qdrant collection (or alias). Writes wait until Qdrant has applied
    them (`wait=True`), so a search that follows sees them. With `lengths` (the partitions' length tally), the
    collection carries BM25 vectors too (`create_collection(lexical=True)`), written from the texts an upsert
    gives, and searched through `qdrant_lexical.QdrantLexical`."""

    def __init__(
        self, client: QdrantClient, collection: str, dim: int, model_version: str,
        exact_filter_max: int = 20_000, exact: bool = False, lengths: LengthTally | None = None,
    ) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim
        self.model_version = model_version
        self.exact_filter_max = exact_filter_max
        self.exact = exact
        self.lengths = lengths

    @property
    def lexical(self) -> bool:
        return self.lengths is not None

    def __len__(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def describe(self) -> dict[str, Any]:
        """What `/index/stats` shows of this index."""
        return {"kind": "qdrant", "collection": self.collection, "exact_filter_max": self.exact_filter_max,
                "bm25": self.lexical}

    def __contains__(self, ext_id: str) -> bool:
        return bool(self.client.retrieve(self.collection, [point_id(ext_id)], with_payload=False))

    def languages(self) -> dict[str, int]:
        hits = self.client.facet(self.collection, key="lang", exact=True, limit=10_000).hits
        return {str(hit.value): int(hit.count) for hit in hits}

    def documents(self) -> list[DocEntry]:
        return [
            DocEntry(point.payload["id"], point.payload.get("lang"), point.payload.get("meta") or {})
            for page in self._pages(with_payload=True)
            for point in page
            if point.payload is not None
        ]

    def stored(self, ext_ids: Sequence[str]) -> dict[str, tuple[DocEntry, str]]:
        """The documents these ids name as the payload keeps them, with their texts (absent ids left out)."""
        if not ext_ids:
            return {}
        points = self.client.retrieve(self.collection, [point_id(ext_id) for ext_id in dict.fromkeys(ext_ids)],
                                      with_payload=STORED)
        return dict(_stored(point) for point in points if point.payload is not None and "text" in point.payload)

    def stored_pages(self, page: int = SCROLL_PAGE) -> Iterator[list[tuple[str, tuple[DocEntry, str]]]]:
        """Every document with its text, a page at a time (a scroll: points written meanwhile may or may not
        appear)."""
        for points in self._pages(with_payload=STORED, page=page):
            yield [_stored(point) for point in points if point.payload is not None and "text" in point.payload]

    def upsert(self, docs: Sequence[DocEntry], vectors: np.ndarray, texts: Sequence[str] | None = None) -> None:
        assert vectors.shape == (len(docs), self.dim), (vectors.shape, len(docs), self.dim)
        if len({d.ext_id for d in docs}) != len(docs):
            raise ValueError("duplicate ids in one upsert")
        if not docs:
            return
        payloads: list[dict[str, Any]] = [
            {"id": doc.ext_id, "lang": doc.lang, "meta": dict(doc.metadata), "terms": terms(doc.metadata),
             **({"text": texts[row]} if texts is not None else {})}
            for row, doc in enumerate(docs)
        ]
        named: list[dict[str, Any]] = [{DENSE: vector.astype(np.float32).tolist()} for vector in vectors]
        changes: Changes = {}
        if self.lengths is not None:
            if texts is None:
                raise ValueError(f"{self.collection} carries BM25 vectors: an upsert needs the texts")
            lexical = [LexicalDoc(doc.ext_id, text, doc.lang) for doc, text in zip(docs, texts, strict=True)]
            sparse, changes = sparse_documents(lexical, self._lengths_held(docs), self.lengths)
            for payload, vector, one in zip(payloads, named, sparse, strict=True):
                payload.update(part=one.part, len=one.length)
                vector[SPARSE] = qm.SparseVector(indices=one.vector.indices, values=one.vector.values)
        points = [
            qm.PointStruct(id=point_id(doc.ext_id), vector=vector, payload=payload)
            for doc, vector, payload in zip(docs, named, payloads, strict=True)
        ]
        self.client.upsert(self.collection, points, wait=True)
        if self.lengths is not None:
            self.lengths.add(changes)  # after the write: a failed one, retried, counts once

    def remove(self, ext_ids: Iterable[str]) -> int:
        """Delete these documents; returns how many existed."""
        ids = [point_id(ext_id) for ext_id in dict.fromkeys(ext_ids)]
        if not ids:
            return 0
        present = self.client.retrieve(self.collection, ids, with_payload=["id", "part", "len"])
        if present:
            self.client.delete(self.collection, qm.PointIdsList(points=[p.id for p in present]), wait=True)
            if self.lengths is not None:
                self.lengths.add(leaving(_lengths_of(present)))
        return len(present)

    def _lengths_held(self, docs: Sequence[DocEntry]) -> dict[str, tuple[str, int]]:
        """The (partition, length) each of these ids holds now: a replaced document leaves its tally."""
        held = self.client.retrieve(
            self.collection, [point_id(doc.ext_id) for doc in docs], with_payload=["id", "part", "len"]
        )
        return _lengths_of(held)

    def search(
        self, queries: np.ndarray, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[Neighbours]:
        """Top-k per query row among documents in any of `langs` whose metadata has every `where` pair."""
        assert queries.ndim == 2 and queries.shape[1] == self.dim, queries.shape
        if not len(queries):
            return []
        query_filter = self._filter(langs, where)
        params = qm.SearchParams(exact=self._exact_for(query_filter))
        requests = [
            qm.QueryRequest(query=row.astype(np.float32).tolist(), filter=query_filter, limit=k, params=params,
                            with_payload=["id"])
            for row in queries
        ]
        answers = self.client.query_batch_points(self.collection, requests)
        return [
            Neighbours.of([(point.payload["id"], float(point.score)) for point in answer.points if point.payload])
            for answer in answers
        ]

    def scores(self, query: np.ndarray, ext_ids: Sequence[str]) -> dict[str, float]:
        """One query's inner product with each of these documents; ids the index does not hold are left out."""
        assert query.shape == (self.dim,), query.shape
        return self.scores_many(query[None, :], [ext_ids])[0]

    def scores_many(self, queries: np.ndarray, ext_ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        """Each query row's inner product with its own ids, the vectors of all of them read in one retrieve."""
        assert queries.ndim == 2 and queries.shape[1] == self.dim, queries.shape
        wanted = list(dict.fromkeys(ext_id for ids in ext_ids for ext_id in ids))
        if not wanted:
            return [{} for _ in ext_ids]
        points = self.client.retrieve(self.collection, [point_id(ext_id) for ext_id in wanted],
                                      with_payload=["id"], with_vectors=[DENSE])
        vector_of = {point.payload["id"]: np.asarray(_dense(point.vector), dtype=np.float32)
                     for point in points if point.payload is not None}
        return [{ext_id: float(vector_of[ext_id] @ query.astype(np.float32)) for ext_id in ids if ext_id in vector_of}
                for query, ids in zip(queries, ext_ids, strict=True)]

    def _filter(self, langs: Sequence[str] | None, where: dict[str, Scalar] | None) -> qm.Filter | None:
        conditions = payload_conditions(langs, where)
        return qm.Filter(must=conditions) if conditions else None

    def _exact_for(self, query_filter: qm.Filter | None) -> bool:
        if self.exact:
            return True
        if query_filter is None:
            return False
        matching = self.client.count(self.collection, count_filter=query_filter, exact=True).count
        return matching <= self.exact_filter_max

    def _pages(self, with_payload: bool | list[str], page: int = SCROLL_PAGE) -> Iterator[list[Any]]:
        """Every point, a scroll page at a time."""
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=page, offset=offset, with_payload=with_payload)
            yield points
            if offset is None:
                return


def _stored(point: Any) -> tuple[str, tuple[DocEntry, str]]:
    payload = point.payload
    entry = DocEntry(payload["id"], payload.get("lang"), payload.get("meta") or {})
    return str(payload["id"]), (entry, payload["text"])


def _dense(vector: Any) -> Any:
    """A point's dense vector, whether it came back alone or among its named vectors."""
    return vector[DENSE] if isinstance(vector, dict) else vector


def _lengths_of(points: Sequence[Any]) -> dict[str, tuple[str, int]]:
    return {
        str(p.payload["id"]): (str(p.payload["part"]), int(p.payload["len"]))
        for p in points
        if p.payload is not None and "part" in p.payload
    }

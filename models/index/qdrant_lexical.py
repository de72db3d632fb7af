"""BM25 served by Qdrant: the lexical side of a collection that carries, beside each document's dense vector, a
sparse one (`models/index/sparse.py`), so that `mode=lexical` and `mode=hybrid` work with no per-replica index.

It answers as the index in each replica does (`LexicalIndex`): a document sits in the partition of its language (its
`lang`, else the detected one; payload `part`), a query is analysed by each partition's analyser in turn and
scored there, and each partition keeps its own statistics. The IDF comes from Qdrant (the sparse vector's IDF
modifier) over the partition's documents only (`IdfCorpusParams`); the term-frequency part is computed here with
the partition's mean document length at the time the document was written. That mean is a running one
(`LengthTally`): a document keeps the mean of its write, and a rebuild (a new collection) writes every document
with the current one. How far that moves the ranking: bench/RESULTS.md "BM25 inside Qdrant".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from qdrant_client import models as qm

from xling.models.index.analysis import base_language
from xling.models.index.lexical import LexicalHit, LexicalSearch, best_first
from xling.models.index.qdrant_index import SPARSE, QdrantIndex, payload_conditions, point_id
from xling.models.index.slots import Scalar
from xling.models.index.sparse import query_vector


class QdrantLexical(LexicalSearch):
    """BM25 search over a collection's sparse vectors, with the replica index's answers (`LexicalSearch`)."""

    kind = "qdrant"

    def __init__(self, index: QdrantIndex) -> None:
        if not index.lexical:
            raise ValueError(f"collection {index.collection} carries no BM25 vectors")
        self.client = index.client
        self.collection = index.collection

    @property
    def partitions(self) -> dict[str, int]:
        hits = self.client.facet(self.collection, key="part", exact=True, limit=100_000).hits
        return {str(hit.value): int(hit.count) for hit in sorted(hits, key=lambda hit: str(hit.value))}

    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        # one request per partition, sent together
        if k <= 0:
            return {}
        extra = payload_conditions(langs, where)
        return self._ask(text, self._candidates(langs), k, lambda part: extra)

    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        ids = [point_id(ext_id) for ext_id in dict.fromkeys(ext_ids)]
        if not ids:
            return {}
        points = self.client.retrieve(self.collection, ids, with_payload=["part"])
        by_part: dict[str, list[Any]] = defaultdict(list)
        for point in points:
            if point.payload is not None:
                by_part[str(point.payload["part"])].append(point.id)
        found = self._ask(text, sorted(by_part), len(ids), lambda part: [qm.HasIdCondition(has_id=by_part[part])])
        return {hit.ext_id: hit for hits in found.values() for hit in hits}

    def _candidates(self, langs: Sequence[str] | None) -> list[str]:
        """The partitions a search asks. With a language filter, those languages' own: a declared language's
        documents sit in its base language's partition (undeclared ones never match), and asking a partition
        that holds nothing finds nothing, so no lookup is needed. Without one, every partition present: the
        values of the keyword index on `part` (approximate counts are enough: only the values are used)."""
        if langs:
            return sorted({part for part in (base_language(lang) for lang in langs) if part})
        hits = self.client.facet(self.collection, key="part", exact=False, limit=100_000).hits
        return sorted(str(hit.value) for hit in hits)

    def _ask(
        self, text: str, parts: Sequence[str], k: int, conditions: Callable[[str], list[Any]]
    ) -> dict[str, list[LexicalHit]]:
        """One sparse query per partition (the text analysed as that partition analyses), scored with the
        partition's own IDF; `conditions(part)` narrows each."""
        asked, requests = [], []
        for part in parts:
            vector = query_vector(text, part)
            if not vector.indices:
                continue
            corpus = qm.Filter(must=[_in_part(part)])
            requests.append(qm.QueryRequest(
                query=qm.SparseVector(**vars(vector)), using=SPARSE, limit=k, with_payload=["id"],
                filter=qm.Filter(must=[_in_part(part), *conditions(part)]),
                params=qm.SearchParams(idf=qm.IdfCorpusParams(corpus=corpus)),
            ))
            asked.append(part)
        if not requests:
            return {}
        answers = self.client.query_batch_points(self.collection, requests)
        found: dict[str, list[LexicalHit]] = {}
        for part, answer in zip(asked, answers, strict=True):
            hits = [LexicalHit(str(p.payload["id"]), float(p.score), part)
                    for p in answer.points if p.payload is not None and p.score > 0]
            if hits:
                found[part] = best_first(hits)
        return found


def _in_part(part: str) -> qm.FieldCondition:
    return qm.FieldCondition(key="part", match=qm.MatchValue(value=part))

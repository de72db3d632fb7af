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
from collections.abc import Sequence
from typing import Any

from qdrant_client import models as qm

from xling.models.index.analysis import base_language
from xling.models.index.lexical import LexicalSearch
from xling.models.index.lexical_ranking import LexicalAnswer, LexicalHit, Scored, best_first
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

    def answer_many(
        self,
        texts: Sequence[str],
        depth: int,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        candidates: Sequence[Sequence[str]],
    ) -> list[LexicalAnswer]:
        """A batch in one query call: for each query, one sparse request per partition for its top `depth` and
        one per partition holding some of its candidates for their BM25 (a has-id filter), each scored with the
        partition's own IDF. Where the candidates sit is read first, in one retrieve for the whole batch."""
        parts = self._candidates(langs) if depth > 0 else []
        extra = payload_conditions(langs, where)
        held = self._parts_of({ext_id for asked in candidates for ext_id in asked})
        keys: list[tuple[int, str, bool]] = []  # (row, partition, a top rather than candidates' scores)
        requests: list[qm.QueryRequest] = []
        for row, (text, asked) in enumerate(zip(texts, candidates, strict=True)):
            for part in parts:
                request = _request(text, part, depth, extra)
                if request is not None:
                    keys.append((row, part, True))
                    requests.append(request)
            by_part: dict[str, list[str]] = defaultdict(list)
            for ext_id in dict.fromkeys(asked):
                if ext_id in held:
                    by_part[held[ext_id]].append(point_id(ext_id))
            for part, ids in sorted(by_part.items()):
                request = _request(text, part, len(ids), [qm.HasIdCondition(has_id=ids)])
                if request is not None:
                    keys.append((row, part, False))
                    requests.append(request)
        tops: list[dict[str, Scored]] = [{} for _ in texts]
        known: list[dict[str, Scored]] = [{} for _ in texts]
        answers = self.client.query_batch_points(self.collection, requests) if requests else []
        for (row, part, top), answer in zip(keys, answers, strict=True):
            hits = [LexicalHit(str(p.payload["id"]), float(p.score), part)
                    for p in answer.points if p.payload is not None and p.score > 0]
            if hits:
                (tops if top else known)[row][part] = Scored.of_hits(best_first(hits))
        return [LexicalAnswer(depth, top, found, frozenset(asked))
                for top, found, asked in zip(tops, known, candidates, strict=True)]

    def _parts_of(self, ext_ids: set[str]) -> dict[str, str]:
        """The partition of each of these documents the collection holds."""
        if not ext_ids:
            return {}
        points = self.client.retrieve(self.collection, [point_id(ext_id) for ext_id in ext_ids],
                                      with_payload=["id", "part"])
        return {str(p.payload["id"]): str(p.payload["part"]) for p in points
                if p.payload is not None and "part" in p.payload}

    def _candidates(self, langs: Sequence[str] | None) -> list[str]:
        """The partitions a search asks. With a language filter, those languages' own: a declared language's
        documents sit in its base language's partition (undeclared ones never match), and asking a partition
        that holds nothing finds nothing, so no lookup is needed. Without one, every partition present: the
        values of the keyword index on `part` (approximate counts are enough: only the values are used)."""
        if langs:
            return sorted({part for part in (base_language(lang) for lang in langs) if part})
        hits = self.client.facet(self.collection, key="part", exact=False, limit=100_000).hits
        return sorted(str(hit.value) for hit in hits)


def _request(text: str, part: str, limit: int, conditions: list[Any]) -> qm.QueryRequest | None:
    """One sparse query in one partition (the text analysed as that partition analyses), scored with the
    partition's own IDF; None when the text has no term there."""
    vector = query_vector(text, part)
    if not vector.indices or limit <= 0:
        return None
    return qm.QueryRequest(
        query=qm.SparseVector(**vars(vector)), using=SPARSE, limit=limit, with_payload=["id"],
        filter=qm.Filter(must=[_in_part(part), *conditions]),
        params=qm.SearchParams(idf=qm.IdfCorpusParams(corpus=qm.Filter(must=[_in_part(part)]))),
    )


def _in_part(part: str) -> qm.FieldCondition:
    return qm.FieldCondition(key="part", match=qm.MatchValue(value=part))

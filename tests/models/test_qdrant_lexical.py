"""BM25 served from a Qdrant collection's sparse vectors (qdrant-client's local mode) answers as the replica index
does on the same documents: the same hits and scores per partition, under language and metadata filters, after
replaces and deletes; the length tally follows the writes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from xling.models.index.analysis import terms
from xling.models.index.lexical import LexicalDoc, LexicalIndex
from xling.models.index.lexical_ranking import LexicalHit, Scored
from xling.models.index.qdrant_index import QdrantIndex, create_collection, has_lexical
from xling.models.index.qdrant_lexical import QdrantLexical
from xling.models.index.slots import DocEntry, Scalar
from xling.models.index.sparse import MemoryLengths

DIM = 4
DOCS: list[tuple[str, str, str | None, dict[str, Scalar]]] = [
    ("en1", "The river bank holds the money of the town", "en", {"year": 1}),
    ("en2", "Fish swim up the river in spring", "en", {"year": 2}),
    ("en3", "Snow covers the mountain every winter", "en", {"year": 1}),
    ("en4", "Rivers and banks: a history of money", "en", {}),
    ("de1", "Der Fluss fließt durch die Stadt river", "de", {"year": 1}),
    ("de2", "Die Bank am Fluss hat Geld", "de", {}),
    ("sw1", "mto mto samaki river", "sw", {"year": 2}),
    ("x1", "La rivière traverse la ville et la banque", None, {}),  # no language given: detected (fr)
]
QUERIES = ["river bank money", "Fluss Bank", "river", "la rivière", "mto samaki", "nothing matches this"]


def _entries(docs: list[tuple[str, str, str | None, dict[str, Scalar]]]) -> tuple[list[DocEntry], list[str]]:
    return [DocEntry(i, lang, meta) for i, _, lang, meta in docs], [text for _, text, _, _ in docs]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[QdrantIndex, LexicalIndex, MemoryLengths]:
    client = QdrantClient(location=":memory:")
    create_collection(client, "c", DIM, lexical=True)
    lengths = MemoryLengths()
    qdrant = QdrantIndex(client, "c", DIM, "v1", lengths=lengths)
    replica = LexicalIndex(tmp_path / "lexical")
    write(qdrant, replica, DOCS)
    return qdrant, replica, lengths


def write(
    qdrant: QdrantIndex, replica: LexicalIndex, docs: list[tuple[str, str, str | None, dict[str, Scalar]]]
) -> None:
    entries, texts = _entries(docs)
    rng = np.random.default_rng(len(docs))
    vectors = rng.normal(size=(len(docs), DIM)).astype(np.float32)
    qdrant.upsert(entries, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), texts=texts)
    replica.upsert([LexicalDoc(i, text, lang, meta) for i, text, lang, meta in docs])
    replica.commit(None)


def same_hits(ours: list[LexicalHit], theirs: list[LexicalHit]) -> None:
    assert [(h.ext_id, h.partition) for h in ours] == [(h.ext_id, h.partition) for h in theirs]
    assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], rel=1e-3)


def agree(qdrant: QdrantIndex, replica: LexicalIndex) -> None:
    lexical = QdrantLexical(qdrant)
    assert lexical.partitions == replica.partitions
    filters: list[tuple[list[str] | None, dict[str, Scalar] | None]] = [
        (None, None), (["en"], None), (["de", "sw"], None), (None, {"year": 1}), (["en"], {"year": 2}),
    ]
    for query in QUERIES:
        for langs, where in filters:
            same_hits(lexical.search(query, 5, langs, where), replica.search(query, 5, langs, where))
        ids = [doc[0] for doc in DOCS] + ["never-written"]
        ours, theirs = lexical.scores(query, ids), replica.scores(query, ids)
        assert ours.keys() == theirs.keys()
        for ext_id, hit in ours.items():
            assert hit.score == pytest.approx(theirs[ext_id].score, rel=1e-3)
        scaled, reference = lexical.scaled(query, None, None, True), replica.scaled(query, None, None, True)
        assert dict(scaled.top(10)) == pytest.approx(dict(reference.top(10)), rel=1e-3)


def test_qdrant_bm25_answers_as_the_tantivy_index(pair: tuple[QdrantIndex, LexicalIndex, MemoryLengths]) -> None:
    qdrant, replica, _ = pair
    assert has_lexical(qdrant.client, "c") and qdrant.describe()["bm25"] is True
    agree(qdrant, replica)
    assert {h.ext_id for h in QdrantLexical(qdrant).search("river", 10)} >= {"en1", "en2", "de1", "sw1"}
    assert QdrantLexical(qdrant).search("nothing matches this", 10) == []


def test_replaces_and_deletes_find_what_tantivy_finds_and_a_rebuild_scores_alike(
    pair: tuple[QdrantIndex, LexicalIndex, MemoryLengths], tmp_path: Path
) -> None:
    qdrant, replica, lengths = pair
    # A replace that moves a document to another language, a replace in place, and a delete.
    changed: list[tuple[str, str, str | None, dict[str, Scalar]]] = [
        ("en1", "Der Fluss und die Bank", "de", {"year": 1}), ("sw1", "mto samaki samaki", "sw", {}),
    ]
    write(qdrant, replica, changed)
    assert qdrant.remove(["en3", "never-written"]) == 1
    replica.remove(["en3"])
    replica.commit(None)
    lexical = QdrantLexical(qdrant)
    assert lexical.partitions == replica.partitions
    for query in QUERIES:
        for langs in (None, ["en"], ["de"]):
            ours, theirs = lexical.search(query, 10, langs), replica.search(query, 10, langs)
            assert {(h.ext_id, h.partition) for h in ours} == {(h.ext_id, h.partition) for h in theirs}
    assert "en3" not in {h.ext_id for h in lexical.search("snow mountain winter", 10)}
    assert {h.partition for h in lexical.search("Fluss Bank", 10) if h.ext_id == "en1"} == {"de"}
    # Scores may drift (a document keeps the mean length of its write; replica counts a deleted document's length
    # until it merges). The tally equals a recount of what the collection holds, so a rebuild (a new collection,
    # written with the current means) scores as a replica index built from the same documents.
    live = list(({doc[0]: doc for doc in DOCS if doc[0] != "en3"} | {doc[0]: doc for doc in changed}).values())
    recount: dict[str, tuple[int, int]] = {}
    for ext_id, text, _, _ in live:
        part = lexical.scores(text, [ext_id])[ext_id].partition
        docs, length = recount.get(part, (0, 0))
        recount[part] = (docs + 1, length + len(terms(text, part)))
    assert {part: held for part, held in lengths.held.items() if held[0]} == recount
    create_collection(qdrant.client, "rebuilt", DIM, lexical=True)
    rebuilt = QdrantIndex(qdrant.client, "rebuilt", DIM, "v1", lengths=MemoryLengths())
    entries, texts = _entries(live)
    rebuilt.upsert(entries, np.eye(DIM, dtype=np.float32)[np.arange(len(live)) % DIM], texts=texts)
    fresh = LexicalIndex(tmp_path / "fresh")
    fresh.upsert([LexicalDoc(i, text, lang, meta) for i, text, lang, meta in live])
    fresh.commit(None)
    agree(rebuilt, fresh)


def test_a_collection_with_bm25_needs_the_texts(pair: tuple[QdrantIndex, LexicalIndex, MemoryLengths]) -> None:
    qdrant, _, _ = pair
    with pytest.raises(ValueError, match="needs the texts"):
        qdrant.upsert([DocEntry("n", "en")], np.ones((1, DIM), dtype=np.float32) / 2)
    with pytest.raises(ValueError, match="no BM25"):
        QdrantLexical(QdrantIndex(qdrant.client, "c", DIM, "v1"))


class CountingClient:
    """The calls a search makes to Qdrant, by method."""

    def __init__(self, client: QdrantClient) -> None:
        self.client, self.calls = client, Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self.client, name)


def test_a_batch_is_answered_in_one_query_call_as_each_query_alone(
    pair: tuple[QdrantIndex, LexicalIndex, MemoryLengths]
) -> None:
    qdrant, replica, _ = pair
    lexical = QdrantLexical(qdrant)
    counting = CountingClient(qdrant.client)
    lexical.client = counting  # type: ignore[assignment]  # counts, and otherwise passes every call through
    every = [doc[0] for doc in DOCS] + ["never-written"]
    candidates = [every[n % 3 :: 2] for n in range(len(QUERIES))]
    for langs, where in [(None, None), (["en", "de"], {"year": 1})]:
        counting.calls.clear()
        batch = lexical.answer_many(QUERIES, 4, langs, where, candidates)
        assert counting.calls["query_batch_points"] == 1 and counting.calls["retrieve"] == 1
        assert sum(counting.calls.values()) == 2 + (langs is None)  # the partitions present: one facet
        reference = replica.answer_many(QUERIES, 4, langs, where, candidates)
        for answer, expected, query, asked in zip(batch, reference, QUERIES, candidates, strict=True):
            assert answer.asked == frozenset(asked)
            alone = lexical.per_partition(query, 4, langs, where)
            assert {name: found.hits(name) for name, found in answer.tops.items()} == alone
            for ours, theirs in ((answer.tops, expected.tops), (answer.known, expected.known)):
                assert ours.keys() == theirs.keys()
                for name, found in theirs.items():
                    assert scored(ours[name]) == pytest.approx(scored(found), rel=1e-3)


def scored(found: Scored) -> dict[str, float]:
    return dict(zip(found.ids.tolist(), found.scores.tolist(), strict=True))

"""BM25 as sparse vectors scored by Qdrant (local mode, IDF modifier over one language's documents): the score
equals BM25 computed by hand, and the replica's lexical index gives the same numbers on the same corpus."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from xling.models.index.analysis import terms
from xling.models.index.lexical import LexicalDoc, LexicalIndex
from xling.models.index.sparse import (
    K1,
    B,
    MemoryLengths,
    document_length,
    document_vector,
    query_vector,
    sparse_documents,
    term_id,
)

CORPUS = [
    ("d0", "the cat sat on the mat", "en"),
    ("d1", "a cat and another cat", "en"),
    ("d2", "dogs bark at the moon", "en"),
    ("d3", "die Katze sitzt auf der Matte cat", "de"),  # "cat" in German text: counted in German only
]


def hand_bm25(query: str, doc: str, lang: str, corpus: list[str]) -> float:
    docs = [terms(text, lang) for text in corpus]
    avgdl = sum(map(len, docs)) / len(docs)
    words = terms(doc, lang)
    score = 0.0
    for term in dict.fromkeys(terms(query, lang)):
        n = sum(term in d for d in docs)
        idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
        tf = words.count(term)
        score += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * len(words) / avgdl))
    return score


def test_qdrant_scores_the_sparse_vectors_as_bm25_per_language(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "t", vectors_config={}, sparse_vectors_config={"bm25": qm.SparseVectorParams(modifier=qm.Modifier.IDF)}
    )
    english = [text for _, text, lang in CORPUS if lang == "en"]
    avgdl = {"en": sum(document_length(t, "en") for t in english) / len(english), "de": 7.0}
    client.upsert(
        "t",
        [
            qm.PointStruct(
                id=row,
                payload={"id": doc_id, "lang": lang},
                vector={"bm25": qm.SparseVector(**vars(document_vector(text, lang, avgdl[lang])))},
            )
            for row, (doc_id, text, lang) in enumerate(CORPUS)
        ],
    )
    english_only = qm.Filter(must=[qm.FieldCondition(key="lang", match=qm.MatchValue(value="en"))])
    hits = client.query_points(
        "t",
        query=qm.SparseVector(**vars(query_vector("cat on the mat", "en"))),
        using="bm25",
        query_filter=english_only,
        search_params=qm.SearchParams(idf=qm.IdfCorpusParams(corpus=english_only)),
    ).points
    scores = {hit.payload["id"]: hit.score for hit in hits if hit.payload}
    assert set(scores) == {"d0", "d1", "d2"}  # d2 shares "the"; d3, German, is outside the filter
    for doc_id, text, lang in CORPUS[:3]:
        assert scores[doc_id] == pytest.approx(hand_bm25("cat on the mat", text, lang, english), rel=1e-5)
    assert scores["d0"] > scores["d1"]

    # The replica's lexical index (one partition per language) gives the same scores on the same corpus.
    lexical = LexicalIndex(tmp_path / "lexical")
    lexical.upsert([LexicalDoc(doc_id, text, lang) for doc_id, text, lang in CORPUS])
    lexical.commit(None)
    found = {hit.ext_id: hit.score for hit in lexical.search("cat on the mat", 10, langs=["en"])}
    lexical.close()
    assert found.keys() == scores.keys()
    for doc_id, score in scores.items():
        assert found[doc_id] == pytest.approx(score, rel=1e-3)


def test_terms_are_namespaced_by_language() -> None:
    assert term_id("en", "cat") != term_id("de", "cat")
    assert term_id("pt-BR", "gato") == term_id("pt", "gato")  # the base language, as the analyser uses
    vector = document_vector("cat cat dog", "en", avgdl=3.0)
    assert len(vector.indices) == 2 and sorted(vector.indices) == vector.indices
    assert query_vector("cat cat", "en").values == [1.0]  # a repeated query word counts once


def test_the_tally_gives_the_mean_length_and_survives_losing_count() -> None:
    lengths = MemoryLengths()
    docs = [LexicalDoc("a", "the cat sat", "en"), LexicalDoc("b", "a dog", "en"), LexicalDoc("c", "die Katze", "de")]
    sparse, changes = sparse_documents(docs, {}, lengths)
    assert changes == {"en": (2, 5), "de": (1, 2)}  # nothing is counted until the write is stored
    assert lengths.totals(["en"]) == {"en": (0, 0)}
    assert sparse[0].vector == document_vector("the cat sat", "en", avgdl=2.5) and sparse[0].part == "en"
    lengths.add(changes)
    # A replace that moves "b" to German: it leaves the English tally and joins the German one.
    moved, changes = sparse_documents([LexicalDoc("b", "ein Hund bellt", "de")], {"b": ("en", 2)}, lengths)
    assert changes == {"en": (-1, -2), "de": (1, 3)}
    assert moved[0].vector == document_vector("ein Hund bellt", "de", avgdl=2.5)  # (2 + 3) / (1 + 1)
    # A tally that lost count (its writer died between a write and its tally) falls back to the batch's mean.
    lost = MemoryLengths()
    again, _ = sparse_documents([LexicalDoc("a", "the cat sat on it", "en")], {"a": ("en", 3)}, lost)
    assert again[0].vector == document_vector("the cat sat on it", "en", avgdl=len(terms("the cat sat on it", "en")))

"""One conformance suite over every index kind: FAISS flat, FAISS hnsw (configured exhaustively, with filters
through the graph or through the exact scan) and Qdrant through `qdrant-client`'s embedded local mode (the
client API a Qdrant server answers too; CI runs no server). Exact top-k against brute force, language and
metadata filters, replace and delete never returning old or deleted documents, and a restart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from xling.models.index.qdrant_index import (
    QdrantIndex,
    alias_target,
    collection_name,
    create_collection,
    point_alias,
    point_id,
)
from xling.models.index.served import ServedIndex
from xling.models.index.vector_index import DocEntry, IndexSpec, Neighbour, Scalar, VectorIndex

LANGS = ["en", "de", "fr", "es"]
DIM = 16
# Every FAISS kind must behave as the exact flat index where the approximate one is configured exhaustively
# (efSearch >= corpus): through its graph, with filters through the graph (exact_filter_max=0) or through the
# exact scan of the matching vectors.
FAISS_SPECS = {
    "flat": IndexSpec(),
    "hnsw-graph-filter": IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=200, ef_search=1_024, exact_filter_max=0),
    "hnsw-exact-filter": IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=200, ef_search=1_024),
}
KINDS = [*FAISS_SPECS, "qdrant-local"]


Index = ServedIndex  # the interface under test (models/index/served.py)


class Kind:
    """Builds an index of one kind in `folder`, and restarts it (what a process restart does to it)."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self._clients: list[QdrantClient] = []

    def new(self) -> Index:
        if self.name in FAISS_SPECS:
            return VectorIndex(DIM, "v1", FAISS_SPECS[self.name])
        client = self._client()
        create_collection(client, "xling-v1", DIM)
        return QdrantIndex(client, "xling-v1", DIM, "v1")

    def restart(self, index: Index) -> Index:
        if isinstance(index, VectorIndex):
            index.save(self.folder / "snapshot", "1-0")
            loaded, _ = VectorIndex.load(self.folder / "snapshot", "v1", DIM, index.spec)
            return loaded
        assert isinstance(index, QdrantIndex)
        index.client.close()  # the local mode locks its folder: one client at a time
        return QdrantIndex(self._client(), index.collection, DIM, "v1")

    def _client(self) -> QdrantClient:
        client = QdrantClient(path=str(self.folder / "qdrant"))
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    built = Kind(request.param, tmp_path)
    yield built
    built.close()


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


Corpus = tuple[Index, list[DocEntry], np.ndarray]


@pytest.fixture
def filled(kind: Kind) -> Corpus:
    rng = np.random.default_rng(0)
    docs = [
        DocEntry(f"d{i}", LANGS[i % 4], {"topic": ["a", "b", "c"][i % 3], "year": 2000 + i % 5}) for i in range(300)
    ]
    vectors = unit(rng, len(docs))
    index = kind.new()
    index.upsert(docs, vectors)
    return index, docs, vectors


def brute_force(query: np.ndarray, docs: list[DocEntry], vectors: np.ndarray, keep: list[bool], k: int) -> list[str]:
    scores = vectors @ query
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    return [docs[i].ext_id for i in order[:k]]


def ids(hits: list[Neighbour]) -> list[str]:
    return [h.ext_id for h in hits]


def test_search_returns_exact_top_k(filled: Corpus) -> None:
    index, docs, vectors = filled
    query = vectors[7]
    hits = index.search(query[None], 5)[0]
    assert hits[0].ext_id == "d7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert ids(hits) == brute_force(query, docs, vectors, [True] * len(docs), 5)
    assert [h.score for h in hits] == pytest.approx(sorted((vectors @ query).tolist(), reverse=True)[:5], abs=1e-5)


def test_filters_give_the_true_top_k(filled: Corpus) -> None:
    index, docs, vectors = filled
    rng = np.random.default_rng(1)
    for trial in range(25):
        langs = list(rng.choice(LANGS, size=int(rng.integers(1, 3)), replace=False))
        where: dict[str, Scalar] = {"topic": "b"} if trial % 2 else {}
        if trial % 5 == 0:
            where["year"] = 2003
        keep = [d.lang in langs and all(d.metadata[k] == v for k, v in where.items()) for d in docs]
        query = unit(rng, 1)[0]
        assert ids(index.search(query[None], 10, langs, where)[0]) == brute_force(query, docs, vectors, keep, 10)


def test_metadata_equality_is_typed(kind: Kind) -> None:
    """1, 1.0, true and "1" are four different values, in every kind."""
    index = kind.new()
    values: list[Scalar] = [1, 1.0, True, "1", None]
    vectors = unit(np.random.default_rng(2), len(values))
    index.upsert([DocEntry(f"v{i}", "en", {"x": value}) for i, value in enumerate(values)], vectors)
    for i, value in enumerate(values):
        assert ids(index.search(np.ones((1, DIM), np.float32), 10, None, {"x": value})[0]) == [f"v{i}"], value


def test_unknown_language_or_value_finds_nothing(filled: Corpus) -> None:
    index, _, vectors = filled
    assert index.search(vectors[:2], 5, ["xx"]) == [[], []]
    assert index.search(vectors[:2], 5, ["en"], {"topic": "zz"}) == [[], []]


def test_upsert_replaces_and_remove_deletes(filled: Corpus) -> None:
    index, _, vectors = filled
    index.upsert([DocEntry("d0", "fr", {})], vectors[1:2])
    assert len(index) == 300
    assert set(ids(index.search(vectors[1:2], 2)[0])) == {"d0", "d1"}
    assert ids(index.search(vectors[1:2], 1, ["fr"])[0]) == ["d0"]
    assert "d0" not in ids(index.search(vectors[0:1], 300, ["en"])[0])
    assert "d0" not in ids(index.search(vectors[0:1], 300, None, {"topic": "a"})[0])  # its old metadata is gone
    assert index.languages()["fr"] == 76  # 75 French documents plus d0, moved from English
    assert index.remove(["d0", "d1", "missing"]) == 2
    assert len(index) == 298 and "d0" not in index and "d2" in index
    assert all(h.ext_id not in ("d0", "d1") for h in index.search(vectors[:2], 300)[0])
    assert index.scores(vectors[2], ["d2", "d1", "missing"]) == pytest.approx({"d2": 1.0}, abs=1e-5)


def test_random_writes_match_a_brute_force_reference(kind: Kind) -> None:
    """Inserts, replacements (some changing language) and deletes in random order, then searches, then a
    restart: the index finds what a brute-force scan of the expected documents finds, never a deleted id."""
    rng = np.random.default_rng(7)
    index = kind.new()
    truth: dict[str, tuple[DocEntry, np.ndarray]] = {}
    deleted: set[str] = set()
    for _ in range(40):
        batch = [f"d{i}" for i in rng.choice(120, size=int(rng.integers(1, 12)), replace=False)]
        if rng.random() < 0.35:
            index.remove(batch)
            for doc_id in batch:
                if truth.pop(doc_id, None) is not None:
                    deleted.add(doc_id)
        else:
            docs = [DocEntry(doc_id, str(rng.choice(LANGS)), {"n": int(rng.integers(3))}) for doc_id in batch]
            vectors = unit(rng, len(docs))
            index.upsert(docs, vectors)
            truth.update({d.ext_id: (d, v) for d, v in zip(docs, vectors, strict=True)})
            deleted -= set(batch)

    def reference(query: np.ndarray, k: int, langs: list[str] | None = None, n: int | None = None) -> list[str]:
        items = [(d, v) for d, v in truth.values() if (not langs or d.lang in langs) and n in (None, d.metadata["n"])]
        scores = np.array([float(v @ query) for _, v in items])
        return [items[i][0].ext_id for i in np.argsort(-scores, kind="stable")[:k]]

    queries = unit(rng, 8)
    for restarted in (False, True):
        if restarted:
            index = kind.restart(index)
        assert len(index) == len(truth)
        for query in queries:
            assert ids(index.search(query[None], 10)[0]) == reference(query, 10)
            assert ids(index.search(query[None], 5, ["de"])[0]) == reference(query, 5, ["de"])
            assert ids(index.search(query[None], 5, ["de", "fr"], {"n": 1})[0]) == reference(query, 5, ["de", "fr"], 1)
            assert not deleted & set(ids(index.search(query[None], 200)[0]))


# Qdrant only: ids, names and the alias that a hot swap moves --------------------------------------------------
def test_point_ids_are_deterministic_uuids() -> None:
    assert point_id("doc-1") == point_id("doc-1") != point_id("doc-2")
    assert len(point_id("x" * 1000)) == 36
    assert collection_name("xling", "e5 small/v2:1") == "xling-e5_small_v2_1"


def test_the_payload_carries_id_text_language_and_metadata(tmp_path: Path) -> None:
    client = QdrantClient(path=str(tmp_path / "q"))
    try:
        create_collection(client, "c", DIM)
        index = QdrantIndex(client, "c", DIM, "v1")
        index.upsert([DocEntry("a/1", "de", {"year": 2020})], unit(np.random.default_rng(3), 1), texts=["Hallo Welt"])
        (point,) = client.retrieve("c", [point_id("a/1")], with_payload=True)
        assert point.payload is not None
        assert {k: point.payload[k] for k in ("id", "text", "lang", "meta")} == {
            "id": "a/1", "text": "Hallo Welt", "lang": "de", "meta": {"year": 2020}}
        assert index.documents() == [DocEntry("a/1", "de", {"year": 2020})]
    finally:
        client.close()


def test_moving_the_alias_under_concurrent_searches_fails_none(tmp_path: Path) -> None:
    """Searches read the alias; the new version's collection is filled, the alias moves, the old collection is
    dropped: every search before, during and after answers, from one collection or the other."""
    client = QdrantClient(path=str(tmp_path / "q"))
    rng = np.random.default_rng(4)
    docs = [DocEntry(f"d{i}", LANGS[i % 4], {}) for i in range(200)]
    old_vectors, new_vectors = unit(rng, 200), unit(rng, 200)
    try:
        for version in ("v1", "v2"):
            create_collection(client, collection_name("xling", version), DIM)
        QdrantIndex(client, "xling-v1", DIM, "v1").upsert(docs, old_vectors)
        point_alias(client, "xling-serving", "xling-v1")
        serving = QdrantIndex(client, "xling-serving", DIM, "serving")
        stop = threading.Event()
        failures: list[BaseException] = []
        answered: list[str] = []

        def search_loop() -> None:
            while not stop.is_set():
                try:
                    hits = serving.search(new_vectors[:1], 1)[0]
                    assert len(hits) == 1
                    answered.append(hits[0].ext_id)
                except BaseException as exc:  # noqa: BLE001 - every failure counts
                    failures.append(exc)

        threads = [threading.Thread(target=search_loop) for _ in range(4)]
        for thread in threads:
            thread.start()
        QdrantIndex(client, "xling-v2", DIM, "v2").upsert(docs, new_vectors)
        before = len(answered)
        point_alias(client, "xling-serving", "xling-v2")
        client.delete_collection("xling-v1")
        wait_for(lambda: len(answered) > before + 20)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]
        assert alias_target(client, "xling-serving") == "xling-v2"
        assert serving.search(new_vectors[:1], 1)[0][0].ext_id == "d0"  # the new collection answers now
    finally:
        client.close()


def wait_for(check: Callable[[], Any], timeout_s: float = 30) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if check():
            return
        done.wait(0.01)
    raise AssertionError("timed out")

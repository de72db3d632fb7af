from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.vector_index import DocEntry, IndexMismatchError, SnapshotError, VectorIndex

LANGS = ["en", "de", "fr", "es"]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def filled() -> tuple[VectorIndex, list[DocEntry], np.ndarray]:
    rng = np.random.default_rng(0)
    docs = [
        DocEntry(f"d{i}", LANGS[i % 4], {"topic": ["a", "b", "c"][i % 3], "year": 2000 + i % 5}) for i in range(300)
    ]
    vectors = _unit(rng, len(docs), 16)
    index = VectorIndex(16, "v1")
    index.upsert(docs, vectors)
    return index, docs, vectors


def _brute_force(query: np.ndarray, docs: list[DocEntry], vectors: np.ndarray, keep: list[bool], k: int) -> list[str]:
    scores = vectors @ query
    order = [i for i in np.argsort(-scores, kind="stable") if keep[i]]
    return [docs[i].ext_id for i in order[:k]]


def test_search_returns_exact_top_k(filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, docs, vectors = filled
    query = vectors[7]
    hits = index.search(query[None], 5)[0]
    assert hits[0].ext_id == "d7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.ext_id for h in hits] == _brute_force(query, docs, vectors, [True] * len(docs), 5)


def test_filters_give_the_true_top_k(filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, docs, vectors = filled
    rng = np.random.default_rng(1)
    for trial in range(25):
        langs = list(rng.choice(LANGS, size=int(rng.integers(1, 3)), replace=False))
        where = {"topic": "b"} if trial % 2 else {}
        if trial % 5 == 0:
            where["year"] = 2003
        keep = [d.lang in langs and all(d.metadata[k] == v for k, v in where.items()) for d in docs]
        query = _unit(rng, 1, 16)[0]
        allowed = index.allowed_ids(langs, where)
        got = [h.ext_id for h in index.search(query[None], 10, allowed)[0]]
        assert got == _brute_force(query, docs, vectors, keep, 10), (langs, where)


def test_unknown_language_filter_finds_nothing(filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, _, vectors = filled
    assert index.search(vectors[:2], 5, index.allowed_ids(["xx"], None)) == [[], []]


def test_upsert_replaces_and_remove_deletes(filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, docs, vectors = filled
    index.upsert([DocEntry("d0", "fr", {})], vectors[1:2])
    assert len(index) == 300
    np.testing.assert_allclose(index.vectors_of(["d0"])[0], vectors[1])
    assert index.languages()["fr"] == 76  # 75 French documents plus d0, moved from English
    assert index.remove(["d0", "d1", "missing"]) == 2
    assert len(index) == 298 and "d0" not in index
    assert all(h.ext_id not in ("d0", "d1") for h in index.search(vectors[:2], 300)[0])


def test_snapshot_round_trip(tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, _, vectors = filled
    index.save(tmp_path, "123-4")
    index.remove(["d5"])
    index.save(tmp_path, "123-9")  # a second save replaces the first one's files
    assert len(list(tmp_path.glob("index-*.faiss"))) == 1
    loaded, offset = VectorIndex.load(tmp_path, "v1", 16)
    assert offset == "123-9" and len(loaded) == 299 and "d5" not in loaded
    allowed = loaded.allowed_ids(["de"], {"topic": "a"})
    assert loaded.search(vectors[:3], 7, allowed) == index.search(
        vectors[:3], 7, index.allowed_ids(["de"], {"topic": "a"})
    )


def test_snapshot_of_another_model_version_is_refused(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    index, _, _ = filled
    index.save(tmp_path, "1-0")
    with pytest.raises(IndexMismatchError, match="built by model version 'v1'.*'v2'"):
        VectorIndex.load(tmp_path, "v2", 16)
    with pytest.raises(IndexMismatchError, match="dimension"):
        VectorIndex.load(tmp_path, "v1", 32)


def test_missing_or_inconsistent_snapshot(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    with pytest.raises(SnapshotError):
        VectorIndex.load(tmp_path, "v1", 16)
    index, _, _ = filled
    index.save(tmp_path, "1-0")
    meta = json.loads((tmp_path / "snapshot.json").read_text())
    meta["count"] = 5
    (tmp_path / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(SnapshotError, match="inconsistent"):
        VectorIndex.load(tmp_path, "v1", 16)


def test_snapshot_keeps_metadata_with_line_separator_characters(tmp_path: Path) -> None:
    """Found by schemathesis: U+2028, U+0085 and \\x1c in a metadata value broke the snapshot at restart."""
    index = VectorIndex(4, "v1")
    odd = {"note": "a\u2028b\x85c\x1cd\x1de\x1ef\u2029g\x0bh\x0ci", "emoji": "🐈"}
    index.upsert([DocEntry("odd", "en", odd), DocEntry("plain", None, {})], np.eye(4, dtype=np.float32)[:2])
    index.save(tmp_path, "7-0")
    loaded, offset = VectorIndex.load(tmp_path, "v1", 4)
    assert offset == "7-0" and len(loaded) == 2
    assert [n.ext_id for n in loaded.search(np.eye(4, dtype=np.float32)[:1], 1, loaded.allowed_ids([], odd))[0]] == [
        "odd"
    ]


def test_damaged_documents_file_is_a_snapshot_error(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    index, _, _ = filled
    index.save(tmp_path, "1-0")
    docs_file = next(tmp_path.glob("docs-*.jsonl"))
    docs_file.write_bytes(docs_file.read_bytes()[:-40])
    with pytest.raises(SnapshotError, match="unreadable|inconsistent"):
        VectorIndex.load(tmp_path, "v1", 16)

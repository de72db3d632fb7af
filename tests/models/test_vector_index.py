"""FAISS-specific behaviour: snapshots, compaction, formats. What every index kind shares (top-k, filters,
replace and delete, restart) is in test_index_conformance.py."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from xling.models.index import vector_index
from xling.models.index.vector_index import DocEntry, IndexMismatchError, IndexSpec, SnapshotError, VectorIndex

LANGS = ["en", "de", "fr", "es"]
# Every kind must behave as the exact flat index where the approximate one is configured exhaustively
# (efSearch >= corpus): through its graph, with filters through the graph (exact_filter_max=0) or
# through the exact scan of the matching vectors.
EXHAUSTIVE_HNSW = IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=200, ef_search=1_024, exact_filter_max=0)
SPECS = {
    "flat": IndexSpec(),
    "hnsw-graph-filter": EXHAUSTIVE_HNSW,
    "hnsw-exact-filter": IndexSpec(kind="hnsw", hnsw_m=16, ef_construction=200, ef_search=1_024),
}


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(params=list(SPECS))
def spec(request: pytest.FixtureRequest) -> IndexSpec:
    return SPECS[request.param]


@pytest.fixture
def filled(spec: IndexSpec) -> tuple[VectorIndex, list[DocEntry], np.ndarray]:
    rng = np.random.default_rng(0)
    docs = [
        DocEntry(f"d{i}", LANGS[i % 4], {"topic": ["a", "b", "c"][i % 3], "year": 2000 + i % 5}) for i in range(300)
    ]
    vectors = _unit(rng, len(docs), 16)
    index = VectorIndex(16, "v1", spec)
    index.upsert(docs, vectors)
    return index, docs, vectors


def test_snapshot_round_trip(tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]) -> None:
    index, _, vectors = filled
    index.save(tmp_path, "123-4")
    index.remove(["d5"])
    index.save(tmp_path, "123-9")  # a second save replaces the first one's files
    assert len(list(tmp_path.glob("index-*.faiss"))) == 1
    loaded, offset = VectorIndex.load(tmp_path, "v1", 16, index.spec)
    assert offset == "123-9" and len(loaded) == 299 and "d5" not in loaded
    assert loaded.tombstones == index.tombstones
    assert loaded.search(vectors[:3], 7, ["de"], {"topic": "a"}) == index.search(vectors[:3], 7, ["de"], {"topic": "a"})
    assert loaded.search(vectors[:3], 7) == index.search(vectors[:3], 7)


def test_snapshot_of_another_model_version_is_refused(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    index, _, _ = filled
    index.save(tmp_path, "1-0")
    with pytest.raises(IndexMismatchError, match="built by model version 'v1'.*'v2'"):
        VectorIndex.load(tmp_path, "v2", 16, index.spec)
    with pytest.raises(IndexMismatchError, match="dimension"):
        VectorIndex.load(tmp_path, "v1", 32, index.spec)


def test_missing_or_inconsistent_snapshot(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    index, _, _ = filled
    with pytest.raises(SnapshotError):
        VectorIndex.load(tmp_path, "v1", 16, index.spec)
    index.save(tmp_path, "1-0")
    meta = json.loads((tmp_path / "snapshot.json").read_text())
    meta["count"] = 5
    (tmp_path / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(SnapshotError, match="inconsistent"):
        VectorIndex.load(tmp_path, "v1", 16, index.spec)


def test_snapshot_keeps_metadata_with_line_separator_characters(tmp_path: Path) -> None:
    """Found by schemathesis: U+2028, U+0085 and \\x1c in a metadata value broke the snapshot at restart."""
    index = VectorIndex(4, "v1")
    odd = {"note": "a\u2028b\x85c\x1cd\x1de\x1ef\u2029g\x0bh\x0ci", "emoji": "🐈"}
    index.upsert([DocEntry("odd", "en", odd), DocEntry("plain", None, {})], np.eye(4, dtype=np.float32)[:2])
    index.save(tmp_path, "7-0")
    loaded, offset = VectorIndex.load(tmp_path, "v1", 4)
    assert offset == "7-0" and len(loaded) == 2
    assert [n.ext_id for n in loaded.search(np.eye(4, dtype=np.float32)[:1], 1, [], odd)[0]] == ["odd"]


def test_damaged_documents_file_is_a_snapshot_error(
    tmp_path: Path, filled: tuple[VectorIndex, list[DocEntry], np.ndarray]
) -> None:
    index, _, _ = filled
    index.save(tmp_path, "1-0")
    docs_file = next(tmp_path.glob("docs-*.jsonl"))
    docs_file.write_bytes(docs_file.read_bytes()[:-40])
    with pytest.raises(SnapshotError, match="unreadable|inconsistent"):
        VectorIndex.load(tmp_path, "v1", 16, index.spec)


def test_hnsw_compaction_drops_tombstones_and_keeps_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "COMPACT_MIN_DEAD", 20)
    rng = np.random.default_rng(3)
    index = VectorIndex(16, "v1", EXHAUSTIVE_HNSW)
    docs = [DocEntry(f"d{i}", LANGS[i % 4], {}) for i in range(200)]
    vectors = _unit(rng, 200, 16)
    index.upsert(docs, vectors)
    index.upsert(docs[:15], vectors[100:115])  # 15 replacements: tombstones, below the threshold
    assert index.tombstones == 15 and index.compactions == 0
    index.remove([f"d{i}" for i in range(150, 200)])  # 65 tombstones of 250 slots: a background rebuild
    index.wait_compacted(timeout_s=60)
    assert index.compactions == 1 and index.tombstones == 0 and len(index) == 150
    queries = _unit(rng, 5, 16)
    hits = index.search(queries, 150)
    assert all(len(row) == 150 and not {f"d{i}" for i in range(150, 200)} & {h.ext_id for h in row} for row in hits)
    assert [h.ext_id for h in index.search(vectors[100:101], 2)[0]] == ["d0", "d100"] or [
        h.ext_id for h in index.search(vectors[100:101], 2)[0]
    ] == ["d100", "d0"]


def test_writes_during_a_compaction_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the interleaving, writes made while the graph is rebuilt are in the rebuilt graph."""
    monkeypatch.setattr(vector_index, "COMPACT_CHUNK", 8)
    rng = np.random.default_rng(5)
    index = VectorIndex(16, "v1", EXHAUSTIVE_HNSW)
    docs = [DocEntry(f"d{i}", "en", {}) for i in range(300)]
    index.upsert(docs, _unit(rng, 300, 16))
    index.remove([f"d{i}" for i in range(100)])
    rebuild = threading.Thread(target=index.compact)
    rebuild.start()
    late = _unit(rng, 50, 16)
    for i in range(50):
        index.upsert([DocEntry(f"d{100 + i}", "de", {})], late[i : i + 1])  # replaced mid-rebuild
        index.remove([f"d{250 + i}"])
    rebuild.join(60)
    assert index.compactions == 1 and len(index) == 150
    for i in range(50):
        assert [h.ext_id for h in index.search(late[i : i + 1], 1, ["de"])[0]] == [f"d{100 + i}"]
    assert not {f"d{i}" for i in range(250, 300)} & {h.ext_id for h in index.search(late[:1], 300)[0]}


def test_snapshot_built_with_other_index_parameters_is_refused(tmp_path: Path) -> None:
    index = VectorIndex(4, "v1", EXHAUSTIVE_HNSW)
    index.upsert([DocEntry("a", "en", {})], np.eye(4, dtype=np.float32)[:1])
    index.save(tmp_path, "1-0")
    with pytest.raises(IndexMismatchError, match='built as index .*"hnsw".*flat'):
        VectorIndex.load(tmp_path, "v1", 4, IndexSpec())
    with pytest.raises(IndexMismatchError, match='"m": 32'):
        VectorIndex.load(tmp_path, "v1", 4, dataclasses.replace(EXHAUSTIVE_HNSW, hnsw_m=32))
    # efSearch and the exact-filter threshold are search-time choices: a snapshot serves under new ones.
    loaded, _ = VectorIndex.load(tmp_path, "v1", 4, dataclasses.replace(EXHAUSTIVE_HNSW, ef_search=16))
    assert [h.ext_id for h in loaded.search(np.eye(4, dtype=np.float32)[:1], 1)[0]] == ["a"]


def test_format_1_snapshot_loads_as_flat(tmp_path: Path) -> None:
    """Snapshots written before slots (IndexIDMap2 over hashed ids) still load, without re-encoding."""
    vectors = np.eye(4, dtype=np.float32)[:3]
    hashed = np.array([11, 7, 99], dtype=np.int64)
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    old.add_with_ids(vectors, hashed)
    (tmp_path / "index-x.faiss").write_bytes(faiss.serialize_index(old).tobytes())
    rows = [[11, "a", "en", {}], [7, "b", "de", {"t": 1}], [99, "c", None, {}]]
    (tmp_path / "docs-x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"format": 1, "model_version": "v1", "dim": 4, "applied_offset": "5-0", "count": 3}
    (tmp_path / "snapshot.json").write_text(
        json.dumps({**meta, "index_file": "index-x.faiss", "docs_file": "docs-x.jsonl"})
    )
    loaded, offset = VectorIndex.load(tmp_path, "v1", 4)
    assert offset == "5-0" and len(loaded) == 3
    assert [h.ext_id for h in loaded.search(vectors[1:2], 1)[0]] == ["b"]
    assert [h.ext_id for h in loaded.search(vectors[:1], 3, ["de"], {"t": 1})[0]] == ["b"]
    with pytest.raises(IndexMismatchError):
        VectorIndex.load(tmp_path, "v1", 4, EXHAUSTIVE_HNSW)


def test_damaged_index_file_is_a_snapshot_error(tmp_path: Path) -> None:
    index = VectorIndex(4, "v1")
    index.upsert([DocEntry("a", "en", {})], np.eye(4, dtype=np.float32)[:1])
    index.save(tmp_path, "1-0")
    next(tmp_path.glob("index-*.faiss")).write_bytes(b"not a faiss index")
    with pytest.raises(SnapshotError, match="unreadable index file"):
        VectorIndex.load(tmp_path, "v1", 4)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_hits_come_as_arrays_that_follow_every_write(kind: str) -> None:
    """A search's hits are looked up in an id array the writes keep in step: a flat delete moves the last vector
    into the freed slot, an hnsw delete leaves a tombstone, the array grows past its first size."""
    rng = np.random.default_rng(7)
    index = VectorIndex(8, "v", IndexSpec(kind))
    vectors = rng.normal(size=(1_500, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.upsert([DocEntry(f"d{i}", "en") for i in range(1_000)], vectors[:1_000])
    index.search(vectors[:1], 5)  # the id array is made here, then kept up by the writes below
    index.remove([f"d{i}" for i in range(0, 1_000, 3)])
    index.upsert([DocEntry(f"d{i}", "en") for i in range(1_000, 1_500)], vectors[1_000:])  # grows past 1,024
    live = [i for i in range(1_500) if i >= 1_000 or i % 3]
    found = index.search(vectors[[1, 1_400]], 1)
    assert [hits[0].ext_id for hits in found] == ["d1", "d1400"]
    hits = index.search(vectors[1:2], len(live))[0]
    assert sorted(hit.ext_id for hit in hits) == sorted(f"d{i}" for i in live)
    assert hits[:2] == [(hit.ext_id, hit.score) for hit in list(hits)[:2]]  # a slice reads as its Neighbours
    assert isinstance(hits[0].score, float) and hits[0] == ("d1", pytest.approx(1.0, abs=1e-5))

"""Exact inner-product FAISS index with string ids, language/metadata filters and atomic snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from models.manifest import write_json_atomic

SNAPSHOT_META = "snapshot.json"
SNAPSHOT_FORMAT = 1
ORPHAN_AGE_S = 3600  # files no snapshot names, left by a replica that died mid-save

Scalar = str | int | float | bool | None


class IndexMismatchError(Exception):
    """A snapshot was built by another model version or has another dimension."""


class SnapshotError(Exception):
    """A snapshot is missing parts or its parts disagree."""


def int_id(ext_id: str) -> int:
    """Stable 63-bit id for a string id; every replica and the worker compute the same one.

    Collision odds are about n²/2⁶⁴ (1e-7 at 1.9M documents); a collision is detected and refused.
    """
    return int.from_bytes(hashlib.blake2b(ext_id.encode(), digest_size=8).digest(), "big") >> 1


def _filter_key(key: str, value: Scalar) -> str:
    return f"{key}\x00{json.dumps(value, sort_keys=True)}"


@dataclass
class DocEntry:
    ext_id: str
    lang: str | None
    metadata: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class Neighbour:
    ext_id: str
    score: float


class VectorIndex:
    """IndexIDMap2(IndexFlatIP) over unit vectors (inner product = cosine); every method is thread-safe."""

    def __init__(self, dim: int, model_version: str) -> None:
        self.dim = dim
        self.model_version = model_version
        # Any: faiss's SWIG stubs mistype remove_ids, SearchParameters(sel=...) and deserialize_index.
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._docs: dict[int, DocEntry] = {}
        # Inverted lists for filters: language -> ids, "key\0json(value)" -> ids.
        self._by_lang: dict[str, set[int]] = defaultdict(set)
        self._by_meta: dict[str, set[int]] = defaultdict(set)
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def __contains__(self, ext_id: str) -> bool:
        with self._lock:
            return int_id(ext_id) in self._docs

    def languages(self) -> dict[str, int]:
        with self._lock:
            return {lang: len(ids) for lang, ids in sorted(self._by_lang.items()) if ids}

    def upsert(self, docs: Sequence[DocEntry], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(docs), self.dim), (vectors.shape, len(docs), self.dim)
        ids = np.array([int_id(d.ext_id) for d in docs], dtype=np.int64)
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("duplicate ids in one upsert")
        with self._lock:
            for doc, iid in zip(docs, ids.tolist(), strict=True):
                known = self._docs.get(iid)
                if known is not None and known.ext_id != doc.ext_id:
                    raise ValueError(f"id hash collision between {known.ext_id!r} and {doc.ext_id!r}")
            self._remove_ids([iid for iid in ids.tolist() if iid in self._docs])
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
            for doc, iid in zip(docs, ids.tolist(), strict=True):
                self._add_entry(iid, doc)

    def remove(self, ext_ids: Iterable[str]) -> int:
        with self._lock:
            present = [iid for iid in {int_id(e) for e in ext_ids} if iid in self._docs]
            self._remove_ids(present)
            return len(present)

    def allowed_ids(self, langs: Sequence[str] | None, where: dict[str, Scalar] | None) -> set[int] | None:
        """Ids passing a language list (any of) and metadata equalities (all of); None = no filter."""
        if not langs and not where:
            return None
        with self._lock:
            allowed: set[int] | None = None
            if langs:
                allowed = set().union(*(self._by_lang.get(lang, set()) for lang in langs))
            for key, value in (where or {}).items():
                matching = self._by_meta.get(_filter_key(key, value), set())
                allowed = set(matching) if allowed is None else allowed & matching
            return allowed if allowed is not None else set()

    def search(self, queries: np.ndarray, k: int, allowed: set[int] | None = None) -> list[list[Neighbour]]:
        """Top-k per query row; with `allowed`, the true top-k among those ids (not a post-filtered list)."""
        assert queries.ndim == 2 and queries.shape[1] == self.dim, queries.shape
        if allowed is not None and not allowed:
            return [[] for _ in range(len(queries))]
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        with self._lock:
            if self._index.ntotal == 0:
                return [[] for _ in range(len(queries))]
            k_eff = min(k, int(self._index.ntotal))
            scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k_eff, params=params)
            return [
                [Neighbour(self._docs[iid].ext_id, float(s)) for s, iid in zip(row_s, row_i, strict=True) if iid >= 0]
                for row_s, row_i in zip(scores, ids.tolist(), strict=True)
            ]

    def vectors_of(self, ext_ids: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.stack([self._index.reconstruct(int_id(e)) for e in ext_ids])

    def entries(self) -> list[DocEntry]:
        with self._lock:
            return list(self._docs.values())

    def _add_entry(self, iid: int, doc: DocEntry) -> None:
        self._docs[iid] = doc
        if doc.lang:
            self._by_lang[doc.lang].add(iid)
        for key, value in doc.metadata.items():
            self._by_meta[_filter_key(key, value)].add(iid)

    def _remove_ids(self, iids: list[int]) -> None:
        if not iids:
            return
        self._index.remove_ids(np.array(iids, dtype=np.int64))
        for iid in iids:
            doc = self._docs.pop(iid)
            if doc.lang:
                self._by_lang[doc.lang].discard(iid)
            for key, value in doc.metadata.items():
                self._by_meta[_filter_key(key, value)].discard(iid)

    # Snapshots: data files carry a unique token; snapshot.json names them and is replaced last,
    # so a reader sees either the previous complete snapshot or the new one.
    def save(self, folder: Path, applied_offset: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        index_name, docs_name = f"index-{token}.faiss", f"docs-{token}.jsonl"
        with self._lock:
            index_bytes = faiss.serialize_index(self._index)
            docs = [(iid, d.ext_id, d.lang, d.metadata) for iid, d in self._docs.items()]
            count = int(self._index.ntotal)
        _write_file_atomic(folder / index_name, index_bytes.tobytes())
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in docs)
        _write_file_atomic(folder / docs_name, lines.encode())
        meta = {
            "format": SNAPSHOT_FORMAT,
            "model_version": self.model_version,
            "dim": self.dim,
            "applied_offset": applied_offset,
            "count": count,
            "index_file": index_name,
            "docs_file": docs_name,
        }
        previous = _read_meta(folder)
        write_json_atomic(folder / SNAPSHOT_META, meta)
        # Remove only what the replaced snapshot named: another replica may be writing its own files now.
        for name in (previous.get("index_file"), previous.get("docs_file")):
            if name and name not in (index_name, docs_name):
                (folder / name).unlink(missing_ok=True)
        cutoff = time.time() - ORPHAN_AGE_S
        for orphan in list(folder.glob("index-*.faiss")) + list(folder.glob("docs-*.jsonl")):
            if orphan.name not in (index_name, docs_name) and orphan.stat().st_mtime < cutoff:
                orphan.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path, expected_version: str, expected_dim: int) -> tuple[VectorIndex, str]:
        """Load a snapshot; returns the index and the doc-log offset it has applied."""
        meta = _read_meta(folder)
        if not meta:
            raise SnapshotError(f"no snapshot at {folder}")
        if meta.get("model_version") != expected_version:
            raise IndexMismatchError(
                f"snapshot {folder} was built by model version {meta.get('model_version')!r}; "
                f"refusing to serve it with model version {expected_version!r}"
            )
        if meta.get("dim") != expected_dim:
            raise IndexMismatchError(f"snapshot {folder} has dimension {meta.get('dim')}, encoder has {expected_dim}")
        index = cls(expected_dim, expected_version)
        try:
            raw = np.frombuffer((folder / meta["index_file"]).read_bytes(), dtype=np.uint8)
            # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and \x1c..\x1e, which
            # json.dumps(ensure_ascii=False) leaves raw inside strings (a metadata value may hold them).
            doc_lines = [line for line in (folder / meta["docs_file"]).read_bytes().decode("utf-8").split("\n") if line]
        except FileNotFoundError as exc:  # replaced by a newer snapshot while we read
            raise SnapshotError(f"snapshot {folder} changed while loading: {exc}") from exc
        index._index = faiss.deserialize_index(raw)
        try:
            for line in doc_lines:
                iid, ext_id, lang, metadata = json.loads(line)
                index._add_entry(int(iid), DocEntry(ext_id, lang, metadata))
        except (ValueError, TypeError) as exc:  # a damaged file: rebuild from the documents rather than fail
            raise SnapshotError(f"snapshot {folder} has an unreadable documents file: {exc}") from exc
        if not (index._index.ntotal == len(index._docs) == meta["count"]):
            raise SnapshotError(
                f"snapshot {folder} is inconsistent: {index._index.ntotal} vectors, "
                f"{len(index._docs)} documents, {meta['count']} recorded"
            )
        return index, str(meta["applied_offset"])


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / SNAPSHOT_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

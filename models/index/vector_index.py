"""The served vector index: a SlotStore (slots.py) behind a lock, background compaction of
an approximate index's tombstones, and atomic snapshots that record how the index was built."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xling.models.files import write_json_atomic
from xling.models.index.neighbours import Neighbour, Neighbours
from xling.models.index.slots import DocEntry, IndexSpec, Scalar, SlotStore

__all__ = ["DocEntry", "IndexMismatchError", "IndexSpec", "Neighbour", "Scalar", "SnapshotError", "VectorIndex"]

log = logging.getLogger(__name__)

SNAPSHOT_META = "snapshot.json"
SNAPSHOT_FORMAT = 2  # 1: an IndexIDMap2 over hashed ids (read and converted when the index is flat)
ORPHAN_AGE_S = 3600  # files no snapshot names, left by a replica that died mid-save
COMPACT_MIN_DEAD = 1_000  # fewer tombstones than this are never worth a rebuild
COMPACT_CHUNK = 16_384


class IndexMismatchError(Exception):
    """A snapshot was built by another model version, has another dimension, or another index build."""


class SnapshotError(Exception):
    """A snapshot is missing parts or its parts disagree."""


class VectorIndex:
    """Unit vectors under string ids (inner product = cosine); every method is thread-safe."""

    def __init__(self, dim: int, model_version: str, spec: IndexSpec | None = None) -> None:
        self.dim = dim
        self.model_version = model_version
        self.spec = spec or IndexSpec()
        self._store = SlotStore(self.spec, dim)
        self._lock = threading.RLock()
        self._journal: set[str] | None = None  # ids written while a compaction runs
        self._compactor: threading.Thread | None = None
        self.compactions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def __contains__(self, ext_id: str) -> bool:
        with self._lock:
            return ext_id in self._store.slot_of

    def describe(self) -> dict[str, Any]:
        """What `/index/stats` shows of this index: its build parameters, tombstones and compactions."""
        return {**self.spec.build_params(), "tombstones": self.tombstones, "compactions": self.compactions}

    @property
    def tombstones(self) -> int:
        with self._lock:
            return self._store.dead

    def languages(self) -> dict[str, int]:
        with self._lock:
            return self._store.languages()

    def set_ef_search(self, ef_search: int) -> None:
        """Change a search-time parameter (hnsw's candidate list); the structure is untouched."""
        with self._lock:
            self.spec = dataclasses.replace(self.spec, ef_search=ef_search)
            self._store.spec = self.spec

    def documents(self) -> list[DocEntry]:
        """Every document, in slot order (insertion order on an index that never deleted one)."""
        with self._lock:
            return [self._store.entry(slot) for slot in self._store.live_slots()]

    def export(self, chunk: int = 4_096) -> Iterator[tuple[list[DocEntry], np.ndarray]]:
        """Every document with its stored vector, `chunk` at a time (copying a built index elsewhere)."""
        with self._lock:
            slots = list(self._store.live_slots())
        for start in range(0, len(slots), chunk):
            part = slots[start:start + chunk]
            with self._lock:
                yield [self._store.entry(slot) for slot in part], self._store.vectors(part)

    def upsert(self, docs: Sequence[DocEntry], vectors: np.ndarray, texts: Sequence[str] | None = None) -> None:
        """Add or replace (`texts` are not kept: models/index/served.py)."""
        assert vectors.shape == (len(docs), self.dim), (vectors.shape, len(docs), self.dim)
        if len({d.ext_id for d in docs}) != len(docs):
            raise ValueError("duplicate ids in one upsert")
        with self._lock:
            self._store.upsert(docs, vectors)
            if self._journal is not None:
                self._journal.update(d.ext_id for d in docs)
            self._maybe_compact()

    def remove(self, ext_ids: Iterable[str]) -> int:
        ids = list(ext_ids)
        with self._lock:
            removed = self._store.remove(ids)
            if self._journal is not None:
                self._journal.update(ids)
            self._maybe_compact()
            return removed

    def search(
        self, queries: np.ndarray, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[Neighbours]:
        """Top-k per query row among documents in any of `langs` whose metadata has every `where` pair;
        exact on a flat index, deleted documents never. The filter is resolved under the same lock as
        the search, so a concurrent write cannot shift the slots in between."""
        assert queries.ndim == 2 and queries.shape[1] == self.dim, queries.shape
        with self._lock:
            return self._store.search(queries, k, langs, where)

    def scores(self, query: np.ndarray, ext_ids: Sequence[str]) -> dict[str, float]:
        """One query's inner product with each of these documents; ids the index does not hold are left out."""
        assert query.shape == (self.dim,), query.shape
        with self._lock:
            held = [ext_id for ext_id in dict.fromkeys(ext_ids) if ext_id in self._store.slot_of]
            vectors = self._store.vectors([self._store.slot_of[ext_id] for ext_id in held])
        return dict(zip(held, (vectors @ query.astype(np.float32)).tolist(), strict=True))

    def scores_many(self, queries: np.ndarray, ext_ids: Sequence[Sequence[str]]) -> list[dict[str, float]]:
        return [self.scores(query, ids) for query, ids in zip(queries, ext_ids, strict=True)]  # no round trips

    def vectors_of(self, ext_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these ids, in order (KeyError for an id the index does not hold)."""
        with self._lock:
            return self._store.vectors([self._store.slot_of[ext_id] for ext_id in ext_ids])

    def vectors_found(self, ext_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The ids of these the index holds (in the order given) and their stored vectors, read at one moment."""
        with self._lock:
            found = [ext_id for ext_id in ext_ids if ext_id in self._store.slot_of]
            return found, self._store.vectors([self._store.slot_of[ext_id] for ext_id in found])

    # Compaction (hnsw) ----------------------------------------------------------------------------
    def _maybe_compact(self) -> None:
        store = self._store
        if self.spec.kind != "hnsw" or self._compactor is not None:
            return
        if store.dead < max(COMPACT_MIN_DEAD, self.spec.compact_dead_ratio * store.slots):
            return
        self._compactor = threading.Thread(target=self._compact_logged, name="xling-compact", daemon=True)
        self._compactor.start()

    def _compact_logged(self) -> None:
        try:
            self.compact()
        except Exception:  # the old structure keeps serving; the next write past the threshold retries
            log.exception("index compaction failed")
        finally:
            with self._lock:
                self._compactor = None

    def wait_compacted(self, timeout_s: float | None = None) -> None:
        with self._lock:
            thread = self._compactor
        if thread is not None:
            thread.join(timeout_s)

    def compact(self) -> None:
        """Rebuild the structure from the live documents, without tombstones, while searches and writes
        go on against the old one; writes made meanwhile are replayed onto the new one before it serves."""
        with self._lock:
            if self._journal is not None:
                return  # one compaction at a time
            self._journal = set()
            old = self._store
            slots = list(old.live_slots())
        started = time.monotonic()
        try:
            fresh = SlotStore(self.spec, self.dim)
            for start in range(0, len(slots), COMPACT_CHUNK):
                with self._lock:  # slots of a graph are never reused, so a live slot still holds its document
                    part = [s for s in slots[start : start + COMPACT_CHUNK] if old.ext_ids[s] is not None]
                    entries, vectors = [old.entry(s) for s in part], old.vectors(part)
                fresh.upsert(entries, vectors)  # outside the lock: graph insertion is the slow part
            with self._lock:
                for ext_id in self._journal:
                    slot = old.slot_of.get(ext_id)
                    if slot is None:
                        fresh.remove([ext_id])
                    else:
                        fresh.upsert([old.entry(slot)], old.vectors([slot]))
                self._store = fresh
                self.compactions += 1
            log.info(
                "index compacted",
                extra={"dropped": old.dead, "vectors": len(fresh), "seconds": round(time.monotonic() - started, 1)},
            )
        finally:
            with self._lock:
                self._journal = None

    # Snapshots: data files carry a unique token; snapshot.json names them and is replaced last,
    # so a reader sees either the previous complete snapshot or the new one.
    def save(self, folder: Path, applied_offset: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        index_name, docs_name = f"index-{token}.faiss", f"docs-{token}.jsonl"
        with self._lock:
            store = self._store
            index_bytes = faiss.serialize_index(store.faiss)
            docs = [(slot, *astuple(store.entry(slot))) for slot in store.live_slots()]
            slots = store.slots
        _write_file_atomic(folder / index_name, index_bytes.tobytes())
        del index_bytes
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in docs)
        _write_file_atomic(folder / docs_name, lines.encode())
        meta = {
            "format": SNAPSHOT_FORMAT,
            "model_version": self.model_version,
            "dim": self.dim,
            "index": self.spec.build_params(),
            "applied_offset": applied_offset,
            "count": len(docs),
            "slots": slots,
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
    def load(
        cls, folder: Path, expected_version: str, expected_dim: int, spec: IndexSpec | None = None
    ) -> tuple[VectorIndex, str]:
        """Load a snapshot; returns the index and the doc-log offset it has applied."""
        spec = spec or IndexSpec()
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
        built = meta.get("index", {"kind": "flat"})  # format 1 was always flat
        if built != spec.build_params():
            raise IndexMismatchError(
                f"snapshot {folder} was built as index {json.dumps(built, sort_keys=True)}; "
                f"refusing to serve it as {spec.describe()} (XLING_INDEX and its parameters)"
            )
        index_path = folder / meta["index_file"]
        try:
            # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and \x1c..\x1e, which
            # json.dumps(ensure_ascii=False) leaves raw inside strings (a metadata value may hold them).
            doc_lines = [line for line in (folder / meta["docs_file"]).read_bytes().decode("utf-8").split("\n") if line]
            # FAISS reads the file into the index's own memory: no second copy of a million vectors.
            structure: Any = faiss.read_index(str(index_path))  # Any: the stubs know no subclass attributes
        except FileNotFoundError as exc:  # replaced by a newer snapshot while we read
            raise SnapshotError(f"snapshot {folder} changed while loading: {exc}") from exc
        except RuntimeError as exc:  # FAISS: missing (replaced meanwhile) or damaged
            raise SnapshotError(f"snapshot {folder} has an unreadable index file: {str(exc).splitlines()[0]}") from exc
        try:
            rows = json.loads("[" + ",".join(doc_lines) + "]")  # one parse for the whole file
            del doc_lines
            if meta.get("format", 1) == 1:
                structure, rows = _from_id_map(structure, rows)
            store = SlotStore(spec, expected_dim, structure)
            if spec.kind == "hnsw":
                structure.hnsw.efConstruction = spec.ef_construction
            store.restore([(int(slot), DocEntry(ext_id, lang, metadata)) for slot, ext_id, lang, metadata in rows])
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # damaged: rebuild from the documents instead
            raise SnapshotError(f"snapshot {folder} has an unreadable documents file: {exc}") from exc
        if not (len(store) == meta["count"] and store.slots == meta.get("slots", meta["count"])):
            raise SnapshotError(
                f"snapshot {folder} is inconsistent: {store.slots} vectors, "
                f"{len(store)} documents, {meta['count']} recorded"
            )
        index = cls(expected_dim, expected_version, spec)
        index._store = store
        return index, str(meta["applied_offset"])


def _from_id_map(structure: Any, rows: list[list[Any]]) -> tuple[Any, list[list[Any]]]:
    """A format-1 snapshot (IndexIDMap2 over hashed ids) as a flat index whose positions are slots."""
    id_map = faiss.vector_to_array(structure.id_map)
    inner = faiss.downcast_index(structure.index)
    position = {int(iid): pos for pos, iid in enumerate(id_map.tolist())}
    flat = faiss.IndexFlatIP(inner.d)
    flat.add(inner.reconstruct_n(0, inner.ntotal))
    return flat, [[position[int(iid)], ext_id, lang, metadata] for iid, ext_id, lang, metadata in rows]


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

"""One FAISS structure whose positions are slots, with each slot's document and the filter postings.

Two kinds (DESIGN §3, `XLING_INDEX`):

- `flat`: exact inner product (`IndexFlatIP`). It stays compact: a replaced document's vector is
  overwritten in its slot, a deleted one's slot takes the last vector, and the tail is cut; FAISS's
  own `remove_ids` on an id map would rewrite the whole array on every replacing upsert.
- `hnsw`: approximate (`IndexHNSWFlat`). A graph cannot forget a node, so a replaced or deleted
  document's slot becomes a tombstone: its postings are cleared, a live-slot bitmap keeps it out of
  every result, and `VectorIndex` rebuilds the graph without tombstones once they pile up.

Filters (a language list and metadata equalities) are bitmaps over slots (postings.py) that go
to FAISS as an `IDSelectorBitmap`, never a per-query set of ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import faiss
import numpy as np

from xling.models.index.neighbours import Neighbours
from xling.models.index.postings import Postings, bitmap_bytes, bitmap_of, bits_set, fitted, popcount, set_bit

IndexKind = Literal["flat", "hnsw"]
Scalar = str | int | float | bool | None
# flat: a filter matching at least this share of the slots is served by a larger unfiltered BLAS scan
# whose non-matching hits are dropped (exact, see _overfetch); below it FAISS scans only the matching
# vectors. Measured on 100k x 384, 32 queries, 2 cores: unfiltered 18 ms, selector scan 21 ms at 10%
# and 67 ms at 50% of the slots.
BROAD_FILTER = 0.2
MAX_EF_SEARCH = 4_096

# This FAISS wheel sends flat searches of fewer than 128,000 queries to a per-query SIMD scan that
# reads the whole matrix once per query; from 4 queries on, the BLAS path reads it once per batch
# (measured: 32 queries over 100k x 384 on 2 cores, 89 ms -> 18 ms). Process-wide, set on import.
faiss.cvar.distance_compute_blas_threshold = 4


@dataclass(frozen=True)
class IndexSpec:
    """How to build and search an index. `build_params` is what a snapshot must match to be loaded;
    `ef_search` and `exact_filter_max` are search-time choices and may change between runs."""

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    exact_filter_max: int = 20_000  # hnsw: a filter matching at most this many documents is scanned exactly
    compact_dead_ratio: float = 0.2  # hnsw: rebuild once tombstones reach this share of the slots

    def __post_init__(self) -> None:
        if self.kind not in ("flat", "hnsw"):
            raise ValueError(f"index kind must be 'flat' or 'hnsw', not {self.kind!r}")
        if min(self.hnsw_m, self.ef_construction, self.ef_search) < 2:
            raise ValueError("hnsw_m, ef_construction and ef_search must be at least 2")

    def build_params(self) -> dict[str, Any]:
        if self.kind == "flat":
            return {"kind": "flat"}
        return {"kind": "hnsw", "m": self.hnsw_m, "ef_construction": self.ef_construction}

    def describe(self) -> str:
        return json.dumps(self.build_params(), sort_keys=True)

    def new_faiss(self, dim: int) -> Any:
        if self.kind == "flat":
            return faiss.IndexFlatIP(dim)
        index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index


def filter_key(key: str, value: Scalar) -> str:
    return f"{key}\x00{json.dumps(value, sort_keys=True)}"


@dataclass
class DocEntry:
    ext_id: str
    lang: str | None
    metadata: dict[str, Scalar] = field(default_factory=dict)


class SlotStore:
    """Not thread-safe on its own: VectorIndex holds the lock."""

    def __init__(self, spec: IndexSpec, dim: int, structure: Any = None) -> None:
        self.spec = spec
        self.dim = dim
        # Any: faiss's SWIG stubs mistype search(params=...), remove_ids and the HNSW attributes.
        self.faiss: Any = structure if structure is not None else spec.new_faiss(dim)
        self.ext_ids: list[str | None] = []  # slot -> document id; None = tombstone
        self.slot_of: dict[str, int] = {}
        self.langs: list[str | None] = []
        self.metadata: list[dict[str, Scalar] | None] = []
        self.by_lang: dict[str, Postings] = {}
        self.by_meta: dict[str, Postings] = {}
        self.live = np.zeros(0, dtype=np.uint8)  # bitmap of slots holding a document
        self.dead = 0
        self._ids: np.ndarray | None = None  # ext_ids as an object array with room to grow (id_array)

    @property
    def slots(self) -> int:
        return int(self.faiss.ntotal)

    def __len__(self) -> int:
        return len(self.slot_of)

    def languages(self) -> dict[str, int]:
        return {lang: p.count for lang, p in sorted(self.by_lang.items()) if p.count}

    def id_array(self) -> np.ndarray:
        """slot -> document id (None: tombstone or past the end) as an object array, so that a search's hits
        are looked up in one gather; once made, every write keeps it in step with `ext_ids`."""
        if self._ids is None or len(self._ids) < len(self.ext_ids):
            self._ids = np.full(max(1_024, 2 * len(self.ext_ids)), None, dtype=object)
            self._ids[: len(self.ext_ids)] = self.ext_ids
        return self._ids

    def live_slots(self) -> Iterator[int]:
        return (slot for slot, ext_id in enumerate(self.ext_ids) if ext_id is not None)

    def entry(self, slot: int) -> DocEntry:
        ext_id = self.ext_ids[slot]
        assert ext_id is not None, slot
        return DocEntry(ext_id, self.langs[slot], self.metadata[slot] or {})

    def vectors(self, slots: Sequence[int]) -> np.ndarray:
        if not slots:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.faiss.reconstruct_batch(np.asarray(slots, dtype=np.int64)), dtype=np.float32)

    def restore(self, rows: Sequence[tuple[int, DocEntry]]) -> None:
        """Fill the slot tables from a snapshot's documents in one pass; slots no row names are tombstones."""
        total = self.slots
        self.ext_ids, self.langs, self.metadata = [None] * total, [None] * total, [None] * total
        self._ids = None
        by_lang: dict[str, list[int]] = {}
        by_meta: dict[str, list[int]] = {}
        for slot, doc in rows:
            if not 0 <= slot < total or self.ext_ids[slot] is not None:
                raise ValueError(f"slot {slot} is out of range or named twice")
            self.ext_ids[slot], self.langs[slot], self.metadata[slot] = doc.ext_id, doc.lang, doc.metadata or None
            self.slot_of[doc.ext_id] = slot
            if doc.lang:
                by_lang.setdefault(doc.lang, []).append(slot)
            for key, value in (doc.metadata or {}).items():
                by_meta.setdefault(filter_key(key, value), []).append(slot)
        self.by_lang = {name: Postings.of(np.array(s, dtype=np.int64)) for name, s in by_lang.items()}
        self.by_meta = {name: Postings.of(np.array(s, dtype=np.int64)) for name, s in by_meta.items()}
        self.live = bitmap_of(np.array([slot for slot, _ in rows], dtype=np.int64), bitmap_bytes(total))
        self.dead = total - len(self.slot_of)

    # Writes -------------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[DocEntry], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        fresh: list[int] = []
        for row, doc in enumerate(docs):
            slot = self.slot_of.get(doc.ext_id)
            if slot is None:
                fresh.append(row)
            elif self.spec.kind == "flat":
                self._rows()[slot] = vectors[row]  # overwritten where it lies: no array rewrite
                self._unlink(slot)
                self._link(slot, doc)
            else:
                self._tombstone(slot)
                fresh.append(row)
        if fresh:
            first = self.slots
            self.faiss.add(vectors[fresh])
            for offset, row in enumerate(fresh):
                self._link(first + offset, docs[row])

    def remove(self, ext_ids: Sequence[str]) -> int:
        slots = sorted({self.slot_of[e] for e in ext_ids if e in self.slot_of}, reverse=True)
        if self.spec.kind == "hnsw":
            for slot in slots:
                self._tombstone(slot)
            return len(slots)
        # flat: largest slot first, each takes the current last vector; then cut the tail once.
        # The current last slot is never one still to remove: those all lie below the one in hand.
        total = self.slots
        rows = self._rows()
        for slot in slots:
            last = total - 1
            self._unlink(slot)
            if slot != last:
                moved = self.entry(last)
                rows[slot] = rows[last]
                self._unlink(last)
                self._link(slot, moved)
            total -= 1
        if total < self.slots:
            self.faiss.remove_ids(faiss.IDSelectorRange(total, self.slots))
            del self.ext_ids[total:], self.langs[total:], self.metadata[total:]
        return len(slots)

    def _rows(self) -> np.ndarray:
        """flat only: a writable view of the stored vectors (valid until the next add)."""
        return faiss.rev_swig_ptr(self.faiss.get_xb(), self.slots * self.dim).reshape(self.slots, self.dim)

    def _link(self, slot: int, doc: DocEntry) -> None:
        if slot == len(self.ext_ids):
            self.ext_ids.append(doc.ext_id)
            self.langs.append(doc.lang)
            self.metadata.append(doc.metadata or None)
        else:
            self.ext_ids[slot], self.langs[slot], self.metadata[slot] = doc.ext_id, doc.lang, doc.metadata or None
        self.slot_of[doc.ext_id] = slot
        if self._ids is not None:
            if slot < len(self._ids):
                self._ids[slot] = doc.ext_id
            else:
                self._ids = None  # made again, with room, when next read
        self.live = set_bit(self.live, slot, True)
        for posting in self._postings_of(slot, create=True):
            posting.add(slot)

    def _unlink(self, slot: int) -> None:
        """Forget the slot's document: id map, postings and live bit (the vector stays)."""
        for posting in self._postings_of(slot, create=False):
            posting.discard(slot)
        ext_id = self.ext_ids[slot]
        if ext_id is not None:
            del self.slot_of[ext_id]
        self.ext_ids[slot], self.langs[slot], self.metadata[slot] = None, None, None
        if self._ids is not None:
            self._ids[slot] = None
        self.live = set_bit(self.live, slot, False)

    def _tombstone(self, slot: int) -> None:
        self._unlink(slot)
        self.dead += 1

    def _postings_of(self, slot: int, *, create: bool) -> list[Postings]:
        keys: list[tuple[dict[str, Postings], str]] = []
        lang = self.langs[slot]
        if lang:
            keys.append((self.by_lang, lang))
        for key, value in (self.metadata[slot] or {}).items():
            keys.append((self.by_meta, filter_key(key, value)))
        found = []
        for table, name in keys:
            posting = table.get(name)
            if posting is None and create:
                posting = table[name] = Postings()
            if posting is not None:
                found.append(posting)
        return found

    # Search -------------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[Neighbours]:
        """Top-k per query row; with a filter, the top-k among matching documents (never a post-filtered short list)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        empty = [Neighbours.of([]) for _ in range(len(queries))]
        if not self.slot_of:
            return empty
        mask = self._filter_mask(langs, where)
        if mask is None:
            if self.dead == 0:
                k = min(k, len(self))
                scores, slots = self.faiss.search(queries, k, params=self._graph_params(len(self), k))
                return self._neighbours(scores, slots, k)
            mask = fitted(self.live, bitmap_bytes(self.slots))
        matching = popcount(mask)
        if matching == 0:
            return empty
        k = min(k, matching)
        if self.spec.kind == "flat":
            if matching >= BROAD_FILTER * self.slots:
                return self._overfetch(queries, k, mask, matching)
            return self._selected(self.faiss, queries, k, mask)
        if matching <= self.spec.exact_filter_max:
            return self._selected(faiss.downcast_index(self.faiss.storage), queries, k, mask)
        return self._selected(self.faiss, queries, k, mask, self._graph_params(matching, k))

    def _graph_params(self, matching: int, k: int = 0) -> Any:
        """hnsw: efSearch, widened as a filter (or tombstones) leave fewer of the graph's nodes eligible."""
        if self.spec.kind != "hnsw":
            return None
        widen = self.slots / max(1, matching)
        ef = min(MAX_EF_SEARCH, max(k, math.ceil(self.spec.ef_search * widen)))
        return faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]  # missing from the stubs

    def _filter_mask(self, langs: Sequence[str] | None, where: dict[str, Scalar] | None) -> np.ndarray | None:
        """The slots passing the filter as a bitmap (None: no filter). May be a view of a posting: read only."""
        if not langs and not where:
            return None
        nbytes = bitmap_bytes(self.slots)
        mask: np.ndarray | None = None
        if langs:
            found = [self.by_lang[lang] for lang in dict.fromkeys(langs) if lang in self.by_lang]
            if not found:
                return np.zeros(nbytes, dtype=np.uint8)
            mask = found[0].bitmap(nbytes)
            if len(found) > 1:
                mask = mask.copy()
                for posting in found[1:]:
                    np.bitwise_or(mask, posting.bitmap(nbytes), out=mask)
        for key, value in (where or {}).items():
            term = self.by_meta.get(filter_key(key, value))
            if term is None:
                return np.zeros(nbytes, dtype=np.uint8)
            bits = term.bitmap(nbytes)
            mask = bits if mask is None else np.bitwise_and(mask, bits)
        return mask

    def _selected(
        self, structure: Any, queries: np.ndarray, k: int, mask: np.ndarray, params: Any = None
    ) -> list[Neighbours]:
        """A search of `structure` that only visits slots set in `mask`."""
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(mask))
        if params is None:
            params = faiss.SearchParameters()
        params.sel = selector
        scores, slots = structure.search(queries, k, params=params)
        del selector  # FAISS read `mask` through it; both lived until here
        return self._neighbours(scores, slots, k)

    def _overfetch(self, queries: np.ndarray, k: int, mask: np.ndarray, matching: int) -> list[Neighbours]:
        """flat, broad filter: the unfiltered BLAS scan for more than k hits, keeping matching ones.

        Exact: the first k matching hits of the true global ranking are the true filtered top-k. Each
        row that found fewer than k asks again for four times as many, up to every slot."""
        fetch = min(self.slots, max(2 * k, math.ceil(1.5 * k * self.slots / matching)))
        results = [Neighbours.of([]) for _ in range(len(queries))]
        pending = np.arange(len(queries))
        while len(pending):
            scores, slots = self.faiss.search(queries[pending], fetch)
            keep = bits_set(mask, slots)
            short = []
            for i, row in enumerate(pending.tolist()):
                picked = np.flatnonzero(keep[i])[:k]
                if len(picked) < k and fetch < self.slots:
                    short.append(row)
                    continue
                results[row] = self._neighbours(scores[i : i + 1, picked], slots[i : i + 1, picked], k)[0]
            pending = np.array(short, dtype=np.int64)
            fetch = min(self.slots, fetch * 4)
        return results

    def _neighbours(self, scores: np.ndarray, slots: np.ndarray, k: int) -> list[Neighbours]:
        """Each row's hits, FAISS's "no result" (-1) and tombstones left out."""
        found = self.id_array()[np.where(slots >= 0, slots, 0)]
        kept = bits_set(self.live, slots)  # a live slot holds a document: tombstones and -1 left out
        return [Neighbours(row_ids[row_kept][:k], row_scores[row_kept][:k])
                for row_ids, row_scores, row_kept in zip(found, scores, kept, strict=True)]

"""Filter postings over index slots: which slots hold a language or a metadata value.

A filter must cost no per-query copy of every matching id (DESIGN §3). A posting list is therefore a
packed bitmap (one bit per slot, little-endian bit order, what FAISS's `IDSelectorBitmap` reads)
once it has more than `SPARSE_MAX` members, and a small set below that, so that a metadata value held
by a handful of documents does not cost a bitmap of the whole corpus. A query combines postings with
vectorised bitwise operations on bitmaps of n/8 bytes (125 KB at a million documents).
"""

from __future__ import annotations

import numpy as np

SPARSE_MAX = 4_096


def bitmap_bytes(slots: int) -> int:
    return (slots + 7) // 8


def fitted(bits: np.ndarray, nbytes: int) -> np.ndarray:
    """`bits` as exactly `nbytes` bytes: a view when it is long enough, else zero-padded."""
    if len(bits) >= nbytes:
        return bits[:nbytes]
    out = np.zeros(nbytes, dtype=np.uint8)
    out[: len(bits)] = bits
    return out


def popcount(bits: np.ndarray) -> int:
    return int(np.bitwise_count(bits).sum(dtype=np.int64))


def bits_set(bits: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Whether each slot's bit is set (slots < 0, FAISS's "no result", read as unset)."""
    safe = np.where(slots >= 0, slots, 0)
    byte = safe >> 3
    inside = byte < len(bits)
    found = np.zeros(slots.shape, dtype=bool)
    found[inside] = (bits[byte[inside]] >> (safe[inside] & 7)) & 1 == 1
    return found & (slots >= 0)


def set_bit(bits: np.ndarray, slot: int, value: bool) -> np.ndarray:
    """Set or clear one bit; grows (doubling) and returns the bitmap when `slot` lies past its end."""
    byte = slot >> 3
    if byte >= len(bits):
        if not value:
            return bits
        grown = np.zeros(max(byte + 1, 2 * len(bits), 64), dtype=np.uint8)
        grown[: len(bits)] = bits
        bits = grown
    if value:
        bits[byte] |= np.uint8(1 << (slot & 7))
    else:
        bits[byte] &= np.uint8(~(1 << (slot & 7)) & 0xFF)
    return bits


def bitmap_of(slots: np.ndarray, nbytes: int) -> np.ndarray:
    out = np.zeros(nbytes, dtype=np.uint8)
    if len(slots):
        np.bitwise_or.at(out, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
    return out


class Postings:
    """The slots holding one language or one metadata value: a set while small, a bitmap past SPARSE_MAX."""

    __slots__ = ("_bits", "_sparse", "count")

    def __init__(self) -> None:
        self._sparse: set[int] | None = set()
        self._bits = np.zeros(0, dtype=np.uint8)
        self.count = 0

    @classmethod
    def of(cls, slots: np.ndarray) -> Postings:
        """Postings holding these distinct slots, built in one vectorised step (snapshot loads)."""
        posting = cls()
        posting.count = len(slots)
        if len(slots) > SPARSE_MAX:
            posting._sparse = None
            posting._bits = bitmap_of(slots, bitmap_bytes(int(slots.max()) + 1))
        else:
            posting._sparse = set(slots.tolist())
        return posting

    def add(self, slot: int) -> None:
        if self._sparse is not None:
            if slot in self._sparse:
                return
            self._sparse.add(slot)
            if len(self._sparse) > SPARSE_MAX:
                for member in self._sparse:
                    self._bits = set_bit(self._bits, member, True)
                self._sparse = None
        else:
            if self._has(slot):
                return
            self._bits = set_bit(self._bits, slot, True)
        self.count += 1

    def _has(self, slot: int) -> bool:
        byte = slot >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (slot & 7) & 1)

    def discard(self, slot: int) -> None:
        if self._sparse is not None:
            if slot in self._sparse:
                self._sparse.remove(slot)
                self.count -= 1
        elif self._has(slot):
            self._bits = set_bit(self._bits, slot, False)
            self.count -= 1

    def bitmap(self, nbytes: int) -> np.ndarray:
        """The members as a bitmap of `nbytes` bytes: a view of the stored bitmap when dense (do not
        write to it); built from at most SPARSE_MAX slots when sparse."""
        if self._sparse is None:
            return fitted(self._bits, nbytes)
        return bitmap_of(np.fromiter(self._sparse, dtype=np.int64, count=len(self._sparse)), nbytes)

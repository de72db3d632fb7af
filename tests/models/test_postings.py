"""Filter postings: a set while small, a bitmap past SPARSE_MAX, the same members either way."""

from __future__ import annotations

import numpy as np
import pytest

from xling.models.index import postings
from xling.models.index.postings import Postings, bitmap_bytes, bits_set, popcount


def members(posting: Postings, slots: int) -> set[int]:
    bits = posting.bitmap(bitmap_bytes(slots))
    return set(np.flatnonzero(bits_set(bits, np.arange(slots))).tolist())


def test_sparse_and_dense_postings_hold_the_same_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postings, "SPARSE_MAX", 8)
    rng = np.random.default_rng(0)
    posting, expected = Postings(), set()
    for slot in rng.integers(0, 300, size=200).tolist():
        if rng.random() < 0.3:
            posting.discard(slot)
            expected.discard(slot)
        else:
            posting.add(slot)
            expected.add(slot)
        assert posting.count == len(expected)
    assert posting._sparse is None  # it went dense on the way
    assert members(posting, 300) == expected
    assert popcount(posting.bitmap(bitmap_bytes(300))) == len(expected)
    built = Postings.of(np.array(sorted(expected), dtype=np.int64))
    assert members(built, 300) == expected and built.count == len(expected)


def test_bitmap_is_padded_or_cut_to_the_asked_size() -> None:
    posting = Postings()
    posting.add(3)
    assert len(posting.bitmap(100)) == 100 and members(posting, 800) == {3}
    assert bits_set(posting.bitmap(1), np.array([3, -1, 9])).tolist() == [True, False, False]

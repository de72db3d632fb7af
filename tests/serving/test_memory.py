"""What keeps the api's memory flat: a bounded kernel cache and freed heap memory handed back."""

from __future__ import annotations

import os
import platform

import pytest

from xling.serving import memory


def test_the_kernel_cache_size_is_what_onednn_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    memory.limit_kernel_cache(7)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_handed_back_on_glibc() -> None:
    assert memory._libc() is not None, "glibc's malloc_trim was not found"
    blocks = [bytearray(64 * 1024) for _ in range(2_000)]  # ~128 MB in heap-sized blocks
    del blocks
    memory.release_free_memory()  # returns (and hands the blocks back) rather than raising

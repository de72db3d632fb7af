"""Keeping the api's memory flat under queries of every shape.

Each micro-batch is a new (rows x tokens) shape. Two things then grow with the shapes seen, not with the load
(measured in bench/RESULTS.md, memory soak):
- oneDNN, which runs bf16 (and some fp32) matmuls on CPU, keeps a compiled kernel per shape in a cache of 1,024 by
  default, about 0.5 MB each; a smaller cache bounds it, and kernels for the common shapes stay in it;
- glibc keeps freed blocks of many sizes in its heaps instead of returning them; `malloc_trim` returns them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


def limit_kernel_cache(capacity: int) -> None:
    """Set oneDNN's kernel cache size; it reads this once, when it compiles its first kernel, so call it before
    the first encode of the process."""
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; nothing elsewhere). ctypes releases the GIL
    while it runs, so searches go on."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33+): sizes in bytes, summed over all arenas."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _mallinfo2() -> Any:
    libc = _libc()
    function = getattr(libc, "mallinfo2", None) if libc is not None else None
    if function is not None:
        function.restype = _MallInfo2
    return function


def heap_usage() -> dict[str, int] | None:
    """The C heap in bytes: `in_use` (live blocks, the big ones mapped on their own included) and `free` (freed
    blocks the heaps keep; what `malloc_trim` can hand back, fragmentation permitting). None off glibc.

    RSS alone cannot tell a leak (in_use grows) from a heap that keeps what it was once given (free grows)."""
    function = _mallinfo2()
    if function is None:
        return None
    info = function()
    return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}

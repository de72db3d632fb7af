"""Compile a per-code-point normalisation map into SentencePiece's "precompiled charsmap".

The `tokenizers` library runs SentencePiece normalisation (`normalizers.Precompiled`) from one
binary blob: a little-endian u32 byte size of a double-array trie, the trie's u32 units, then
NUL-terminated replacement strings. The trie maps the UTF-8 bytes of a source string to the offset
of its replacement. This module builds that blob from `{code point: replacement code points}`, so a
converted model normalises exactly as the map says, in Rust, at the speed of the original.

Unit layout (the one the `tokenizers` reader decodes): bits 0-7 label, bit 8 "has a leaf", bit 9
"offset is shifted by 8", bits 10-31 offset; a leaf unit has bit 31 set and holds the value in
bits 0-30. A node at position p with offset o keeps its child of byte c at (p ^ o) ^ c, and its
leaf value at p ^ o.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

_LEAF_FLAG = 1 << 31
_HAS_LEAF = 1 << 8
_MAX_OFFSET = 1 << 21  # offsets below this are stored unshifted; we never need more


class _Node:
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: int | None = None


def _build_trie(entries: Mapping[bytes, int]) -> _Node:
    root = _Node()
    for key, value in entries.items():
        if not key or 0 in key:
            raise ValueError(f"charsmap keys must be non-empty and free of NUL bytes: {key!r}")
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _Node())
        node.value = value
    return root


def _double_array(root: _Node) -> list[int]:
    """Place every node so that its children and leaf sit at (its base) ^ (label), bases unique."""
    units: list[int] = [0]
    used = bytearray(1)
    used[0] = 1  # the root
    used_bases: set[int] = set()
    search_from = 1

    def ensure(size: int) -> None:
        if size > len(units):
            grow = size - len(units)
            units.extend([0] * grow)
            used.extend(bytes(grow))

    queue: list[tuple[_Node, int]] = [(root, 0)]
    while queue:
        node, position = queue.pop()
        labels = sorted(node.children)
        if node.value is not None:
            labels.insert(0, 0)  # the leaf slot is the child labelled 0
        if not labels:
            continue
        while search_from < len(used) and used[search_from]:
            search_from += 1
        # Try each free slot for the first label; the others must then be free too.
        slot = search_from
        while True:
            base = slot ^ labels[0]
            ensure(max(slot, base | 0xFF) + 1)
            if base not in used_bases and all(not used[base ^ label] for label in labels):
                break
            slot += 1
            while slot < len(used) and used[slot]:
                slot += 1
        offset = position ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("normalisation map too large for an unshifted double array")
        used_bases.add(base)
        units[position] |= offset << 10
        if node.value is not None:
            units[position] |= _HAS_LEAF
            units[base] = _LEAF_FLAG | node.value
            used[base] = 1
        for label, child in node.children.items():
            units[base ^ label] = label
            used[base ^ label] = 1
            queue.append((child, base ^ label))
    # The reader indexes (base ^ byte) for any byte without a bounds check: keep whole 256-unit blocks.
    ensure(-(-len(units) // 256) * 256)
    return units


def precompiled_charsmap(mapping: Mapping[int, Sequence[int]]) -> bytes:
    """The `normalizers.Precompiled` blob for a map from a code point to its replacement code points."""
    blob = bytearray()
    offsets: dict[str, int] = {}
    entries: dict[bytes, int] = {}
    for code_point, replacement in sorted(mapping.items()):
        target = "".join(chr(c) for c in replacement)
        if "\0" in target:
            raise ValueError(f"replacement of U+{code_point:04X} contains NUL")
        if target not in offsets:  # identical replacements share one string
            offsets[target] = len(blob)
            blob += target.encode("utf-8") + b"\0"
        entries[chr(code_point).encode("utf-8")] = offsets[target]
    units = _double_array(_build_trie(entries))
    return struct.pack(f"<I{len(units)}I", 4 * len(units), *units) + bytes(blob)


def lookup(charsmap: bytes, key: bytes) -> str | None:
    """Decode one source string through a precompiled charsmap (the reader's walk); for tests and checks."""
    (trie_bytes,) = struct.unpack_from("<I", charsmap)
    units = struct.unpack_from(f"<{trie_bytes // 4}I", charsmap, 4)
    strings = charsmap[4 + trie_bytes :]

    def offset_of(unit: int) -> int:
        return (unit >> 10) << ((unit & (1 << 9)) >> 6)

    position = offset_of(units[0])
    for index, byte in enumerate(key):
        position ^= byte
        if position >= len(units) or (units[position] & (_LEAF_FLAG | 0xFF)) != byte:
            return None
        unit = units[position]
        position ^= offset_of(unit)
        if index == len(key) - 1 and unit & _HAS_LEAF:
            start = units[position] & ~_LEAF_FLAG
            return strings[start : strings.index(b"\0", start)].decode("utf-8")
    return None

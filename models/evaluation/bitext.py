"""Bitext retrieval accuracy@1 in both directions (Tatoeba-style; see `xling.models.data.bitext` for loading).

For each direction, every source line retrieves among all target lines; accuracy@1 is the share
whose own translation ranks first. Ties are pessimistic: a translation tied with another line counts
as a miss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xling.models.data.bitext import BitextPair
from xling.models.encoder import EncodeFn


def accuracy_at_1(queries: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows i whose target i scores strictly above every other target."""
    scores = queries @ targets.T
    own = np.diag(scores)
    others = scores.copy()
    np.fill_diagonal(others, -np.inf)
    return float(np.mean(own > others.max(axis=1))) if len(own) > 1 else 1.0


def bitext_metrics(pairs: list[BitextPair], encode: EncodeFn, min_lines: int = 100) -> dict[str, Any]:
    """accuracy@1 per pair in both directions, and the macro average over both directions of all pairs."""
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        forward = accuracy_at_1(encode(pair.src_lines, "query"), encode(pair.tgt_lines, "passage"))
        backward = accuracy_at_1(encode(pair.tgt_lines, "query"), encode(pair.src_lines, "passage"))
        rows.append(
            {
                "pair": pair.name,
                "src": pair.src,
                "tgt": pair.tgt,
                "lines": len(pair.src_lines),
                f"{pair.src}->{pair.tgt}": forward,
                f"{pair.tgt}->{pair.src}": backward,
                "mean": (forward + backward) / 2,
                "flagged": len(pair.src_lines) < min_lines,
            }
        )
    return {
        "bitext_acc@1": float(np.mean([r["mean"] for r in rows])),
        "pairs": rows,
        "min_lines": min_lines,
        "tie_policy": "pessimistic",
    }

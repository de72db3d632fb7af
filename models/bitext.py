"""Bitext retrieval (Tatoeba-style) for languages with little QA data.

A folder holds line-aligned files `<prefix>.<src>-<tgt>.<src>` and `<prefix>.<src>-<tgt>.<tgt>`:
line i of one translates line i of the other. For each direction, every source line retrieves among
all target lines; accuracy@1 is the share whose own translation ranks first. Ties are pessimistic:
a translation tied with another line counts as a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.data import DataError
from models.encoder import EncodeFn

_PAIR_FILE = re.compile(r"^(?P<prefix>.+)\.(?P<src>[A-Za-z_]+)-(?P<tgt>[A-Za-z_]+)\.(?P<lang>[A-Za-z_]+)$")


@dataclass(frozen=True)
class BitextPair:
    name: str  # "<prefix>.<src>-<tgt>"
    src: str
    tgt: str
    src_lines: list[str]
    tgt_lines: list[str]


def load_bitext(folder: Path, langs: list[str] | None = None) -> list[BitextPair]:
    groups: dict[tuple[str, str, str], dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _PAIR_FILE.match(path.name)
        if not match or not path.is_file():
            continue
        key = (match["prefix"], match["src"], match["tgt"])
        if match["lang"] in (match["src"], match["tgt"]):
            groups.setdefault(key, {})[match["lang"]] = path
    pairs = []
    for (prefix, src, tgt), files in sorted(groups.items()):
        name = f"{prefix}.{src}-{tgt}"
        if set(files) != {src, tgt}:
            raise DataError(f"{folder}: {name} needs both .{src} and .{tgt} files, found {sorted(files)}")
        if langs and not ({src, tgt} & set(langs)):
            continue
        src_lines = files[src].read_text(encoding="utf-8").splitlines()
        tgt_lines = files[tgt].read_text(encoding="utf-8").splitlines()
        if len(src_lines) != len(tgt_lines):
            raise DataError(
                f"{folder}: {name} is misaligned: {files[src].name} has {len(src_lines)} lines, "
                f"{files[tgt].name} has {len(tgt_lines)}"
            )
        if not src_lines:
            raise DataError(f"{folder}: {name} is empty")
        pairs.append(BitextPair(name, src, tgt, src_lines, tgt_lines))
    if not pairs:
        raise DataError(f"{folder}: no <prefix>.<src>-<tgt>.<lang> file pairs" + (f" for {langs}" if langs else ""))
    return pairs


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

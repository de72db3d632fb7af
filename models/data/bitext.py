"""Bitext (parallel sentences) for languages with little QA data: retrieval accuracy, and training pairs.

Two layouts load into the same `BitextPair`s:
- Tatoeba: a folder of line-aligned files `<prefix>.<src>-<tgt>.<src>` and `<prefix>.<src>-<tgt>.<tgt>`,
  line i of one translating line i of the other;
- JSONL: one `{"src", "tgt", "src_lang", "tgt_lang"}` per line (a file, or a folder holding one);
  lines are grouped by language pair.

For each direction, every source line retrieves among all target lines; accuracy@1 is the share
whose own translation ranks first. Ties are pessimistic: a translation tied with another line counts
as a miss. For training, each line pair is a cross-lingual positive in both directions and never a
monolingual one (its two sides are not a question and an answer).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from xling.models.data.parallel import ParallelGroup
from xling.models.data.text import LANG_FILE, DataError, jsonl_objects, read_utf8

_PAIR_FILE = re.compile(r"^(?P<prefix>.+)\.(?P<src>[A-Za-z_]+)-(?P<tgt>[A-Za-z_]+)\.(?P<lang>[A-Za-z_]+)$")


@dataclass(frozen=True)
class BitextPair:
    name: str  # "<prefix>.<src>-<tgt>"
    src: str
    tgt: str
    src_lines: list[str]
    tgt_lines: list[str]


def _read_lines(path: Path) -> list[str]:
    return read_utf8(path).splitlines()


def _load_tatoeba(folder: Path, langs: list[str] | None) -> list[BitextPair]:
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
        src_lines, tgt_lines = _read_lines(files[src]), _read_lines(files[tgt])
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


def _load_jsonl(file: Path, langs: list[str] | None) -> list[BitextPair]:
    by_pair: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for where, row in jsonl_objects(file, "src, tgt, src_lang, tgt_lang"):
        for key in ("src", "tgt", "src_lang", "tgt_lang"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string")
        src, tgt = row["src_lang"], row["tgt_lang"]
        for code in (src, tgt):
            if not LANG_FILE.match(code):
                raise DataError(f"{where}: bad language code {code!r} (expected e.g. 'en', 'gsw', 'pt-BR')")
        if src == tgt:
            raise DataError(f"{where}: src_lang and tgt_lang are both {src!r}; bitext pairs two languages")
        if "\n" in row["src"] or "\n" in row["tgt"]:
            raise DataError(f"{where}: a sentence contains a line break")
        sources, targets = by_pair.setdefault((src, tgt), ([], []))
        sources.append(row["src"])
        targets.append(row["tgt"])
    if not by_pair:
        raise DataError(f"{file}: no sentence pairs")
    stem = file.name.removesuffix(".jsonl")
    return [
        BitextPair(f"{stem}.{src}-{tgt}", src, tgt, lines[0], lines[1])
        for (src, tgt), lines in sorted(by_pair.items())
        if not langs or {src, tgt} & set(langs)
    ]


def _jsonl_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".jsonl":
        return path
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else []
    return files[0] if len(files) == 1 else None


def is_bitext(path: Path) -> bool:
    """Whether `path` holds bitext (Tatoeba files, or JSONL rows with src/tgt) rather than QA data."""
    if path.is_dir() and any(_PAIR_FILE.match(p.name) for p in path.iterdir() if p.is_file()):
        return True
    file = _jsonl_file(path)
    if file is None:
        return False
    with file.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(row, dict) and "src" in row and "tgt" in row
    return False


def load_bitext(path: Path, langs: list[str] | None = None) -> list[BitextPair]:
    """A Tatoeba folder, or a JSONL file (or a folder holding one); `langs` keeps pairs touching those languages."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    file = _jsonl_file(path)
    return _load_jsonl(file, langs) if file is not None else _load_tatoeba(path, langs)


def bitext_groups(pairs: list[BitextPair]) -> list[ParallelGroup]:
    """Training groups: each line pair a cross-lingual positive both ways, never a monolingual one."""
    groups = []
    for pair in pairs:
        for line, (src_text, tgt_text) in enumerate(zip(pair.src_lines, pair.tgt_lines, strict=True)):
            texts = {pair.src: src_text, pair.tgt: tgt_text}
            groups.append(ParallelGroup(f"{pair.name}#{line}", dict(texts), dict(texts), cross_only=True))
    return groups


def pairs_from_groups(groups: list[ParallelGroup]) -> list[BitextPair]:
    """The bitext pairs `bitext_groups` made these groups from (e.g. a validation split of them), in order."""
    lines: dict[str, tuple[str, str, list[str], list[str]]] = {}
    for group in groups:
        if not group.cross_only or len(group.queries) != 2:
            continue
        (src, src_text), (tgt, tgt_text) = group.queries.items()
        name = group.id.rsplit("#", 1)[0]
        _, _, src_lines, tgt_lines = lines.setdefault(name, (src, tgt, [], []))
        src_lines.append(src_text)
        tgt_lines.append(tgt_text)
    return [BitextPair(name, src, tgt, s, t) for name, (src, tgt, s, t) in lines.items()]

"""Strict readers for data files: UTF-8 text, JSON and JSONL, each error naming the file and the place."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LANG_FILE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


class DataError(ValueError):
    """Training data that cannot be used, with the file and place that says why."""


def _not_utf8(where: str, exc: UnicodeDecodeError, offset: int) -> DataError:
    return DataError(
        f"{where}: not UTF-8 at byte {offset + exc.start} of the file ({exc.reason}); save the file as UTF-8"
    )


def read_utf8(path: Path) -> str:
    """A whole text file, or a DataError naming the file and the byte offset where it stops being UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        raise _not_utf8(str(path), exc, 0) from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a DataError naming the line and byte offset of the first bad byte."""
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(f"{path}:{number}", exc, offset) from None
            offset += len(raw)
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def jsonl_objects(path: Path, expected: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-blank line of a UTF-8 JSONL file; `expected` says what an object holds,
    for the error when a line is not one."""
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with {expected}")
        yield where, row


def read_json_file(path: Path) -> Any:
    """A UTF-8 JSON document, or a DataError naming the file and where it breaks."""
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None

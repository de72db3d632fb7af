"""An append-only journal of JSON lines: what an in-memory index writes at each commit so that a restart reads
back what it held (xling.models.index.lexical.LexicalIndex).

A line is written whole and then flushed to the operating system: a killed process loses nothing it wrote.
A machine that loses power may lose the last lines, and the offset they recorded with them, so the index
replays the log from an earlier offset, which converges (applying is idempotent). A torn last line is cut off
on reading. Rewriting (a compaction) goes through a new file, synced, then renamed over the old one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def read(self) -> Iterator[dict[str, Any]]:
        """Every whole record, in order; a torn last line is cut off the file."""
        if not self.path.exists():
            return
        good = 0
        with self.path.open("r", encoding="utf-8") as lines:
            for line in iter(lines.readline, ""):
                try:
                    record = json.loads(line) if line.endswith("\n") else None
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    break  # only the last line can be torn: nothing after it was acknowledged
                good += len(line.encode("utf-8"))
                yield record
        if good < self.path.stat().st_size:
            with self.path.open("r+b") as raw:
                raw.truncate(good)

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._file.flush()

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the journal by these records, atomically."""
        self.close()
        fresh = self.path.with_suffix(".rewrite")
        with fresh.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(fresh, self.path)

    def clear(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

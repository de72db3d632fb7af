"""File helpers used across xling: atomic JSON writes, whole-folder removal, per-process folders, timestamps."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_dir(folder: Path) -> bool:
    """Delete a folder; False if there is none. Renamed away first, so a reader sees it whole or not at all."""
    if not folder.is_dir():
        return False
    doomed = Path(tempfile.mkdtemp(prefix=f".deleting-{folder.name}-", dir=folder.parent))
    folder.rename(doomed / folder.name)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def claim_folder(root: Path) -> tuple[Path, IO[bytes]]:
    """The first of root/0, root/1, ... that no other live process holds, held by this one until the returned
    file is closed (or the process exits: the lock is the kernel's, a crash leaves none behind). Processes that
    share a data folder each get their own, and a restart gets its old one back."""
    for slot in range(1024):
        folder = root / str(slot)
        folder.mkdir(parents=True, exist_ok=True)
        claim = open(folder / ".claim", "ab")  # noqa: SIM115  # held open: the lock lives as long as the file
        try:
            fcntl.flock(claim.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            claim.close()
            continue
        return folder, claim
    raise RuntimeError(f"no free folder under {root}: 1024 processes hold one")

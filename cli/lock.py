"""One `xling serve` per data folder: a lock file held for the process's life.

With an embedded Redis, the server owns DATA_DIR/redis (the AOF files) and starts a worker; a second
server on the same folder would open the same AOF in a second redis-server. It must refuse before it
touches anything, and say which process holds the folder. The kernel releases a `flock` when its
holder exits, even by SIGKILL, so a crash never leaves a stale lock behind.
(Replicas that share DATA_DIR with an external Redis do not take this lock: that setup is by design.)
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO

LOCK_FILE = "xling.lock"


class DataDirInUse(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Open without truncating: if another process holds the lock, its description must stay readable.
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirInUse(
                f"{self.path.parent} is in use by {holder}; stop that server first, "
                "or give this one its own XLING_DATA_DIR"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"xling serve (pid {os.getpid()}, started {started}, {' '.join(sys.argv)})\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

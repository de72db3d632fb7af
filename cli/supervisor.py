"""Keeps the embedded worker running: restarts it with back-off when it dies, reaps it so no zombie stays.

`xling serve` (embedded mode) runs the Celery worker as a child process. Without a supervisor a
`kill -9` or an out-of-memory kill leaves it a zombie and jobs queued afterwards wait forever.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, so the process can record its state (a Celery worker ends its job, an api stops its worker and
    Redis); SIGKILL only if it has not ended within `timeout_s`. Nothing to do for a process already gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class WorkerSupervisor:
    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        stable_after_s: float = 60.0,
        preexec_fn: Callable[[], None] | None = None,
        start_new_session: bool = False,
        on_exit: Callable[[int], None] = lambda pid: None,
    ) -> None:
        """`on_exit(pid)` runs as soon as a worker process is found dead, before it is restarted."""
        self.argv, self.env, self.preexec_fn, self.on_exit = list(argv), env, preexec_fn, on_exit
        self.start_new_session = start_new_session
        self.min_backoff_s, self.max_backoff_s, self.stable_after_s = min_backoff_s, max_backoff_s, stable_after_s
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:  # never spawn after stop() took the lock
            if self._stopping.is_set():
                return None
            self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=self.preexec_fn,
                                            start_new_session=self.start_new_session)
            log.info("worker started", extra={"pid": self.process.pid, "restarts": self.restarts})
            return self.process

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stopping.is_set():
            process = self._spawn()
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()  # reaps the child: no zombie
            self.on_exit(process.pid)
            if self._stopping.is_set():
                return
            # A worker that ran a while had a real failure, not a crash loop: start over from the short wait.
            if time.monotonic() - started >= self.stable_after_s:
                backoff = self.min_backoff_s
            log.error("worker exited with code %s; restarting in %.0f s", code, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            self.restarts += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None:
            stop_process(process, timeout_s)
        self._thread.join(timeout=5)

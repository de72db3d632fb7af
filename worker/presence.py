"""The worker's presence beat: lets the api tell whether anyone consumes the job queue.

A job's own heartbeat (runner.py) says that *that job* still runs; this one says that a worker
process is up at all, idle or busy, so `/healthz` and queued jobs can report "no worker".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from xling.state.connections import redis_client
from xling.state.jobstore import JobStore
from xling.state.keys import RedisKeys
from xling.state.polling import poll
from xling.state.settings import Settings

log = logging.getLogger(__name__)


def worker_name(pid: int | None = None) -> str:
    """How a worker process is listed in Redis: host and process id."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def forget_worker(settings: Settings, pid: int) -> None:
    """Drop a worker that is known dead from the list at once, rather than when its beats lapse."""
    client = redis_client(settings, socket_timeout=5)
    try:
        JobStore(client, RedisKeys(settings.key_prefix)).worker_gone(worker_name(pid))
    except redis.RedisError as exc:
        log.warning("could not drop dead worker %s from the list (%s); it lapses by itself", pid, exc)
    finally:
        client.close()


def beating_here(settings: Settings) -> bool:
    """Whether a worker of this host beats (within XLING_HEARTBEAT_TIMEOUT_S): a container's health check."""
    client = redis_client(settings, socket_timeout=5)
    try:
        host = f"{socket.gethostname()}:"
        store = JobStore(client, RedisKeys(settings.key_prefix))
        return any(name.startswith(host) for name in store.live_workers(settings.heartbeat_timeout_s))
    finally:
        client.close()


def _forget_dead_local_workers(store: JobStore) -> None:
    """Entries of this host whose process is gone (killed before it could remove itself)."""
    host = f"{socket.gethostname()}:"
    for name in store.live_workers(timeout_s=float("inf")):
        pid = name.removeprefix(host)
        if name.startswith(host) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            store.worker_gone(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@contextmanager
def presence(settings: Settings) -> Iterator[str]:
    """Beat every `heartbeat_interval_s` from a daemon thread while the block runs; remove the entry after."""
    client = redis_client(settings, socket_timeout=5)
    store = JobStore(client, RedisKeys(settings.key_prefix))
    name, stop = worker_name(), threading.Event()
    try:
        _forget_dead_local_workers(store)
    except redis.RedisError:
        pass  # the beat below reports the outage

    def beat() -> None:
        poll(lambda: store.worker_beat(name, settings.heartbeat_timeout_s), stop, every_s=settings.heartbeat_interval_s,
             what=f"worker presence ({name})", logger=log, wait_first=False)

    thread = threading.Thread(target=beat, name="worker-presence", daemon=True)
    thread.start()
    try:
        yield name
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            store.worker_gone(name)
        except redis.RedisError:
            pass  # the entry expires by itself
        client.close()

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

from app.jobstore import JobStore
from app.keys import RedisKeys
from app.logs import OutageNotice
from app.settings import Settings

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def presence(settings: Settings) -> Iterator[str]:
    """Beat every `heartbeat_interval_s` from a daemon thread while the block runs; remove the entry after."""
    assert settings.redis_url is not None
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
    store = JobStore(client, RedisKeys(settings.key_prefix))
    name, stop = worker_name(), threading.Event()

    def beat() -> None:
        outage = OutageNotice(log, f"worker presence ({name})")
        while True:
            try:
                store.worker_beat(name, settings.heartbeat_timeout_s)
                outage.recovered()
            except redis.RedisError as exc:
                outage.failed(exc)
            if stop.wait(settings.heartbeat_interval_s):
                return

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

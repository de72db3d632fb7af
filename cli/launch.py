"""Commands that start processes: `xling serve` (api, and with no Redis configured an embedded Redis and a
supervised worker) and `xling worker`."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated

import typer

from xling.cli.output import fail, quiet_progress_bars
from xling.state.logs import configure_logging
from xling.state.settings import Settings

log = logging.getLogger("xling")


def xling_command(*args: str) -> list[str]:
    """`python -P -m xling.cli ARGS` with this interpreter. -P keeps the current directory off the import path,
    so a folder holding its own `app/` or `models/` packages cannot shadow xling's modules in the child."""
    return [sys.executable, "-P", "-m", "xling.cli", *args]


def serve(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8000,
) -> None:
    """Run the api; with no XLING_REDIS_URL, also an embedded Redis (AOF under DATA_DIR/redis) and a worker."""
    quiet_progress_bars()
    import uvicorn

    from xling.app.main import create_app
    from xling.cli.lock import DataDirInUse, DataDirLock
    from xling.cli.supervisor import WorkerSupervisor
    from xling.state.embedded_redis import EmbeddedRedis, die_with_parent
    from xling.worker.presence import forget_worker

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    lock, embedded, supervisor = None, None, None
    if not settings.redis_configured:
        # The embedded Redis owns DATA_DIR/redis: refuse before touching anything if another server runs there.
        lock = DataDirLock(settings.data_dir)
        try:
            lock.acquire()
        except DataDirInUse as exc:
            fail(str(exc))
        embedded = EmbeddedRedis(settings.redis_dir, appendfsync=settings.embedded_redis_fsync)
        settings.redis_url = embedded.start()
        log.info("embedded redis started", extra={"url": settings.redis_url, "dir": str(settings.redis_dir)})
        if settings.start_worker:
            env = {**os.environ, "XLING_REDIS_URL": settings.redis_url, "XLING_DATA_DIR": str(settings.data_dir)}
            # Its own session: the worker's lower priority can then hold against the api's session too
            # (cli/priority.py), and a signal to the api's process group reaches the api alone, which stops the
            # worker, then Redis.
            supervisor = WorkerSupervisor(
                xling_command("worker"), env, preexec_fn=die_with_parent, start_new_session=True,
                on_exit=lambda pid: forget_worker(settings, pid),  # /healthz counts it dead at once
            )
            supervisor.start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets `finally` stop Redis.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    finally:
        if supervisor is not None:
            supervisor.stop()
        if embedded is not None:
            embedded.stop()
        if lock is not None:
            lock.release()


def worker(
    check: Annotated[
        bool, typer.Option("--check", help="exit 0 if a worker of this host beats in Redis, else 1 (a health check)")
    ] = False,
) -> None:
    """Run the Celery worker: queue `gpu`, one job at a time (solo pool: CUDA does not survive fork)."""
    quiet_progress_bars()
    from xling.cli.priority import lower_priority
    from xling.worker.celery_app import make_celery, worker_argv
    from xling.worker.presence import beating_here, presence

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if not settings.redis_configured:
        fail("the worker needs XLING_REDIS_URL or XLING_REDIS_SENTINELS (xling serve starts one itself)", 2)
    if check:
        raise typer.Exit(0 if beating_here(settings) else 1)
    # Training and re-encoding must not starve the api on shared cores (the quick start runs both on one
    # machine): the kernel then gives the api most of a core whenever both want it.
    lower_priority(settings.worker_nice)
    with presence(settings):
        make_celery(settings).worker_main(worker_argv())

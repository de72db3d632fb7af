"""The Celery app: Redis broker, queue `gpu`, one task per job type, each only calling `run_job`, and the reindex
helper task, which only calls `help_reindex`."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_shutting_down

from xling.state.jobs import JOB_SPECS, QUEUE, REINDEX_RANGE_TASK, celery_config, task_name
from xling.state.settings import Settings
from xling.worker.stopping import request_stop


def make_celery(settings: Settings) -> Celery:
    app = Celery("xling")
    app.conf.update(
        celery_config(settings),
        task_acks_late=False,  # a killed worker's job is failed by the heartbeat sweep, not re-run blindly
        worker_prefetch_multiplier=1,
        # A busy worker reserves nothing more: a queued job, or a reindex's range helper, goes to an idle worker
        # instead of waiting behind the running job (with acks on receipt, prefetch would hold one in reserve).
        worker_disable_prefetch=True,
        worker_hijack_root_logger=False,
    )

    def register(job_type: str) -> None:
        def run(job_id: str) -> None:
            from xling.worker.runner import run_job

            run_job(job_id, settings)

        app.task(name=task_name(job_type))(run)

    for job_type in JOB_SPECS:
        register(job_type)

    def reindex_range(job_id: str) -> None:
        from xling.state.connections import redis_client
        from xling.worker.presence import worker_name
        from xling.worker.reindex import help_reindex

        client = redis_client(settings)
        try:
            help_reindex(job_id, settings, client, worker_name())
        finally:
            client.close()

    app.task(name=REINDEX_RANGE_TASK)(reindex_range)
    worker_shutting_down.connect(request_stop, weak=False)  # a running job ends at its next check
    return app


def worker_argv() -> list[str]:
    # solo pool: one job at a time per GPU, and CUDA does not survive fork
    # -q: no start-up banner on stdout; every line the worker writes goes through the JSON logger.
    return ["-q", "worker", "-Q", QUEUE, "--pool=solo", "--concurrency=1", "--loglevel=INFO",
            "--without-gossip", "--without-mingle"]

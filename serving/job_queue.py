"""Jobs from the api's side: queue a typed job for the worker, and fail the jobs whose worker was lost."""

from __future__ import annotations

import logging
import threading

from celery import Celery

from xling.serving.metrics import Metrics
from xling.state.jobs import QUEUE, JobSpec, celery_sender, task_name
from xling.state.jobstore import Job, JobStore
from xling.state.polling import poll
from xling.state.settings import Settings

log = logging.getLogger(__name__)


class JobQueue:
    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._celery: Celery | None = None  # made at the first submission: start-up needs no broker

    def submit(self, spec: JobSpec, retry_of: str | None = None) -> Job:
        """Record the job, then queue it; a job that cannot be queued is recorded as failed, and the error raised."""
        job = self.store.create(spec.kind, spec.params(), retry_of=retry_of)
        if self._celery is None:
            self._celery = celery_sender(self.settings)
        try:
            self._celery.send_task(task_name(spec.kind), args=[job.id], queue=QUEUE)
        except Exception as exc:
            self.store.transition(job.id, "failed", error=f"could not queue the job: {exc}")
            raise
        self.metrics.jobs_submitted.labels(spec.kind).inc()
        return self.store.get(job.id)

    def live_workers(self) -> list[str]:
        return self.store.live_workers(self.settings.heartbeat_timeout_s)

    def sweep_lost(self) -> None:
        """Fail the jobs whose worker was lost (no heartbeat), and those whose worker beats but that no longer
        advance (`job_stall_timeout_s`)."""
        for job_id in self.store.sweep_lost(self.settings.heartbeat_timeout_s):
            log.warning("job failed: worker lost", extra={"job_id": job_id})
        if self.settings.job_stall_timeout_s > 0:
            for job_id in self.store.sweep_stalled(self.settings.job_stall_timeout_s):
                log.warning("job failed: no progress", extra={"job_id": job_id})

    def run_sweeper(self, stop: threading.Event) -> None:
        poll(self.sweep_lost, stop, every_s=self.settings.sweep_interval_s, what="lost-job sweep", logger=log)

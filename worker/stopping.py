"""The worker process's stop request.

Celery's warm shutdown (SIGTERM: `xling serve` stopping its worker, `docker stop`, systemd) waits for the task
that runs, and a finetune job can have hours left. So the shutdown sets this event; a running job sees it at its
next check (training polls it every step), ends there, and is recorded as failed with the reason, which a retry
resumes from its last checkpoint."""

from __future__ import annotations

import threading

STOPPING = threading.Event()


def request_stop(**_: object) -> None:
    """Receiver of Celery's `worker_shutting_down` signal."""
    STOPPING.set()

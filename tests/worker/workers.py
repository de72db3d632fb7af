"""A real `xling worker` process for the job tests, with fast heartbeats."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from xling.cli.launch import xling_command
from xling.cli.supervisor import stop_process
from xling.state.settings import Settings

# Float32 encoders (see tests/conftest.py FP32), in the api and the worker alike.
FAST = {
    "heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 3.0, "sweep_interval_s": 0.5, "swap_poll_s": 0.2,
    "encoder_precision": "fp32",
}


class Worker:
    def __init__(self, settings: Settings, log: Path, extra: dict[str, Any]) -> None:
        self.settings = settings
        self.log = log
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XLING_")}
        env.update({f"XLING_{k.upper()}": str(v) for k, v in {**FAST, **self.extra}.items()})
        env.update(
            XLING_REDIS_URL=str(self.settings.redis_url), XLING_DATA_DIR=str(self.settings.data_dir),
            XLING_RETRIEVAL_MODEL=str(self.settings.retrieval_model), XLING_LOG_JSON="false", XLING_DEVICE="cpu",
        )
        self.process = subprocess.Popen(
            xling_command("worker"), env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM (Celery waits for the task it runs), then SIGKILL past 30 s: a test that failed mid-job ends."""
        if self.process is not None:
            stop_process(self.process, timeout_s=30)

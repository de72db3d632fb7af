"""A finetune job on several devices: the job's worker starts `torchrun` with one process per device
(`worker/train_ranks.py`) and follows it, forwarding rank 0's progress to the job and a cancel request to the
ranks.

Why a child process and not the Celery task itself: torch.distributed needs one process per device, and a Celery
prefork child may not fork children of its own (a daemonic process). Why files between them: the ranks then
need nothing of the worker's (Redis, the job store), and the folder, `DATA_DIR/jobs/<job id>/`, keeps the ranks'
log for a failed job.

Training is the same as one process on the same global batch (tests/models/test_distributed_training.py): the
batch is split across the ranks and in-batch negatives are gathered from every rank.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from xling.models.training.config import TrainConfig
from xling.models.training.trainer import Progress, TrainResult
from xling.state.settings import Settings
from xling.worker.train_ranks import CANCEL, PROGRESS, RESULT, FinetuneRun

log = logging.getLogger(__name__)
POLL_S = 0.5
LOG_TAIL_CHARS = 3_000


def training_processes(settings: Settings) -> int:
    """How many ranks a finetune job trains with: the setting, or every GPU of this node (1 without)."""
    if settings.train_processes:
        return settings.train_processes
    return max(1, torch.cuda.device_count()) if settings.device in ("auto", "cuda") else 1


def finetune_on_ranks(
    folder: Path,
    processes: int,
    run: FinetuneRun,
    config: TrainConfig,
    progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
) -> TrainResult:
    """Train `run` on `processes` ranks; returns rank 0's result. Raises RuntimeError, with the end of the ranks'
    log, when they fail."""
    folder.mkdir(parents=True, exist_ok=True)
    _stop_previous(folder)  # a retried job: the ranks of the lost attempt must not train beside the new ones
    for name in (PROGRESS, RESULT, CANCEL):
        (folder / name).unlink(missing_ok=True)
    request_path = folder / "request.json"
    request_path.write_text(run.to_json(config), encoding="utf-8")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
        "-m", "xling.worker.train_ranks", str(request_path),
    ]
    log_path = folder / "ranks.log"
    with log_path.open("ab") as out:
        # Its own session: the ranks can be stopped as one group, and a signal to the worker does not reach them.
        ranks = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    (folder / "ranks.pid").write_text(json.dumps({"host": socket.gethostname(), "pgid": ranks.pid}))
    log.info("training on %d ranks", processes, extra={"folder": str(folder), "pid": ranks.pid})
    read = 0
    try:
        while ranks.poll() is None:
            read = _forward(folder / PROGRESS, read, progress)
            if should_cancel():
                (folder / CANCEL).touch()
            time.sleep(POLL_S)
    finally:
        if ranks.poll() is None:  # the worker is shutting down, or forwarding failed
            os.killpg(ranks.pid, signal.SIGTERM)
            ranks.wait()
    _forward(folder / PROGRESS, read, progress)
    if ranks.returncode != 0 or not (folder / RESULT).exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"training on {processes} ranks failed (exit {ranks.returncode}); end of its log:\n{tail}")
    result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
    return TrainResult(
        Path(result["path"]) if result["path"] else None, result["version"], result["steps"], result["cancelled"],
        result["metrics"],
    )


def _forward(path: Path, read: int, progress: Callable[[Progress], None]) -> int:
    """Send the progress lines past byte `read` on; returns how far they have been read (a line still being
    written waits for the next call)."""
    try:
        with path.open("rb") as lines:
            lines.seek(read)
            for line in lines:
                if not line.endswith(b"\n"):
                    break
                progress(Progress(**json.loads(line)))
                read += len(line)
    except FileNotFoundError:
        pass
    return read


def _stop_previous(folder: Path) -> None:
    """Kill the ranks an earlier attempt of this job started on this host, if they still run (their worker was
    killed, and they are in a session of their own)."""
    try:
        previous = json.loads((folder / "ranks.pid").read_text())
    except (OSError, ValueError):
        return
    if previous.get("host") != socket.gethostname():
        return
    try:
        os.killpg(int(previous["pgid"]), signal.SIGKILL)
        log.warning("stopped the ranks of an earlier attempt", extra={"pgid": previous["pgid"]})
    except ProcessLookupError:
        pass

"""One rank of a finetune job that trains on several devices at once.

    python -m torch.distributed.run --standalone --nproc-per-node N -m xling.worker.train_ranks FOLDER/request.json

`worker/ranked_finetune.py` starts it and follows it through files in FOLDER, so the ranks need neither Redis
nor Celery: rank 0 appends progress to `progress.jsonl` and writes `result.json` at the end (it alone writes
the model version); every rank stops at the next step once the file `cancel` exists (the trainer makes the
ranks agree on the step).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from xling.models.files import write_json_atomic
from xling.models.training.config import TrainConfig
from xling.models.training.trainer import Progress, finetune

PROGRESS, RESULT, CANCEL = "progress.jsonl", "result.json", "cancel"


def main(request_path: Path) -> None:
    folder = request_path.parent
    request = json.loads(request_path.read_text(encoding="utf-8"))
    first = int(os.environ.get("RANK", "0")) == 0

    def progress(p: Progress) -> None:
        with (folder / PROGRESS).open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(p)) + "\n")

    result = finetune(
        request["base"], [Path(path) for path in request["data"]], Path(request["out"]),
        TrainConfig(**request["config"]), registry_dir=Path(request["registry_dir"]), version=request["version"],
        device=request["device"], progress=progress if first else None,
        should_cancel=lambda: (folder / CANCEL).exists(), resume_from=request["resume"] or None,
        allow_folder=request["allow_folder"], dataset_names=request["dataset_names"],
    )
    if first:
        write_json_atomic(folder / RESULT, {**asdict(result), "path": str(result.path) if result.path else None})
    # Leave the group together: a rank that exits while the group's threads still run aborts ("terminate called
    # without an active exception", SIGABRT), and the job would read as failed where it was cancelled or done.
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.distributed as dist

from xling.models.files import write_json_atomic
from xling.models.training.config import TrainConfig
from xling.models.training.trainer import CancelFn, Progress, ProgressFn, TrainResult, finetune

PROGRESS, RESULT, CANCEL = "progress.jsonl", "result.json", "cancel"


@dataclass(frozen=True)
class FinetuneRun:
    """What a finetune job trains, besides its TrainConfig: the same object runs in the worker's own process (one
    device) or goes, as JSON, to every rank (`to_json` / `from_json`)."""

    base: str | None  # registry version, folder or hub id; None = the default model
    data: list[Path]
    out: Path
    registry_dir: Path
    version: str
    device: str | None
    resume: bool  # a retried job: continue from the newest checkpoint under `out`
    allow_folder: bool
    dataset_names: list[str]

    def run(self, config: TrainConfig, progress: ProgressFn | None, should_cancel: CancelFn) -> TrainResult:
        return finetune(
            self.base, self.data, self.out, config, registry_dir=self.registry_dir, version=self.version,
            device=self.device, progress=progress, should_cancel=should_cancel, resume_from=self.resume or None,
            allow_folder=self.allow_folder, dataset_names=self.dataset_names,
        )

    def to_json(self, config: TrainConfig) -> str:
        fields = {**asdict(self), "data": [str(p) for p in self.data], "out": str(self.out),
                  "registry_dir": str(self.registry_dir)}
        return json.dumps({"run": fields, "config": config.model_dump()})

    @classmethod
    def from_json(cls, text: str) -> tuple[FinetuneRun, TrainConfig]:
        request = json.loads(text)
        fields = request["run"]
        run = cls(**{**fields, "data": [Path(p) for p in fields["data"]], "out": Path(fields["out"]),
                     "registry_dir": Path(fields["registry_dir"])})
        return run, TrainConfig(**request["config"])


def main(request_path: Path) -> None:
    folder = request_path.parent
    run, config = FinetuneRun.from_json(request_path.read_text(encoding="utf-8"))
    first = int(os.environ.get("RANK", "0")) == 0

    def progress(p: Progress) -> None:
        with (folder / PROGRESS).open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(p)) + "\n")

    result = run.run(config, progress if first else None, lambda: (folder / CANCEL).exists())
    if first:
        write_json_atomic(folder / RESULT, {**asdict(result), "path": str(result.path) if result.path else None})
    # Leave the group together: a rank that exits while the group's threads still run aborts ("terminate called
    # without an active exception", SIGABRT), and the job would read as failed where it was cancelled or done.
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The job contract between the api and the worker: one pydantic model per job kind, and the queue and task
names they travel by. The api validates a request and builds one of these; the job store keeps it as the job's
`params`; the worker parses it back with `parse_job`. Nothing else reads job parameters by string keys."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from celery import Celery
from pydantic import BaseModel, ConfigDict, field_validator

from xling.models.adapters.config import AdapterConfig
from xling.models.evaluation.guards import DEFAULT_MAX_DROP, Guard
from xling.models.index.fusion import SearchMode
from xling.models.training.config import TrainConfig
from xling.state.connections import broker
from xling.state.settings import Settings

QUEUE = "gpu"
JobKind = Literal["finetune", "evaluate", "experiment", "reindex"]
Deploy = Literal["never", "if_better", "always"]


def task_name(kind: str) -> str:
    return f"xling.{kind}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """What the api (sending) and the worker (consuming) must agree on to meet on the same queue."""
    url, transport_options = broker(settings)
    return {
        "broker_url": url,
        "task_default_queue": QUEUE,
        "task_ignore_result": True,  # the job store is the record, not Celery's result backend
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {**transport_options, "global_keyprefix": f"{settings.key_prefix}:celery:"},
    }


REINDEX_RANGE_TASK = "xling.reindex_range"  # a helper: encodes ranges of a running reindex (worker/reindex.py)


def queue_range_helpers(settings: Settings, job_id: str, count: int) -> None:
    """Ask `count` more workers to encode ranges of this reindex; whichever take the tasks join in."""
    app = celery_sender(settings)
    for _ in range(count):
        app.send_task(REINDEX_RANGE_TASK, args=[job_id], queue=QUEUE)


def celery_sender(settings: Settings) -> Celery:
    """A Celery app that only sends tasks: the api queues jobs by name, without importing the worker."""
    app = Celery("xling")
    app.conf.update(celery_config(settings))
    return app


class JobSpec(BaseModel):
    kind: ClassVar[JobKind]
    # Stored jobs are read back by later versions: unknown keys are ignored, not refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    def dataset_names(self) -> set[str]:
        """Every dataset the job reads (a dataset in use cannot be deleted)."""
        return set()

    def model_names(self) -> set[str]:
        """Every model version the job names (a version in use cannot be deleted)."""
        return set()

    def params(self) -> dict[str, Any]:
        """What the job store keeps, and `GET /jobs/{id}` shows, as the job's parameters."""
        return self.model_dump(mode="json")


def as_list(value: str | list[str]) -> list[str]:
    """One dataset name or several: always a list."""
    return [value] if isinstance(value, str) else list(value)


class FinetuneJob(JobSpec):
    kind: ClassVar[JobKind] = "finetune"
    dataset: list[str]
    base: str = "active"
    config: TrainConfig
    eval_datasets: list[str] = []
    deploy: Deploy = "never"
    compare_on: str | None = None
    # if_better also needs every guard kept; None: Mono mAP of every LAReQA eval set and accuracy@1 of every
    # bitext eval set may fall by at most guard_max_drop (models/evaluation/guards.py).
    guards: list[Guard] | None = None
    guard_max_drop: float = DEFAULT_MAX_DROP
    version: str
    # Non-empty: one LoRA adapter per language instead of tuning the shared weights (`config` is then unused).
    adapters: list[str] = []
    adapter_config: AdapterConfig = AdapterConfig()

    _one_or_many = field_validator("dataset", mode="before")(as_list)

    def dataset_names(self) -> set[str]:
        return {*self.dataset, *self.eval_datasets, *([self.compare_on] if self.compare_on else [])}

    def model_names(self) -> set[str]:
        return {self.base, self.version}


class EvaluateJob(JobSpec):
    kind: ClassVar[JobKind] = "evaluate"
    model: str = "active"
    datasets: list[str]
    centering: bool = False  # also score LAReQA sets centred per language
    mode: SearchMode = "dense"  # retrieval to score: hybrid fuses as the service's settings say

    def dataset_names(self) -> set[str]:
        return set(self.datasets)

    def model_names(self) -> set[str]:
        return {self.model}


class ExperimentConfig(BaseModel):
    """The training settings an experiment shares across its strategies (the rest are TrainConfig's defaults)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    batch_size: int = 100
    learning_rate: float = 3e-5
    alpha: float = 0.5
    max_length: int = 128
    val_fraction: float = 0.0
    freeze_embeddings: bool = False

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump())


class ExperimentJob(JobSpec):
    kind: ClassVar[JobKind] = "experiment"
    train_dataset: list[str]
    eval_datasets: list[str]
    base: str = "active"
    steps: int
    seeds: list[int] = [0]
    config: ExperimentConfig = ExperimentConfig()

    _one_or_many = field_validator("train_dataset", mode="before")(as_list)

    def dataset_names(self) -> set[str]:
        return {*self.train_dataset, *self.eval_datasets}

    def model_names(self) -> set[str]:
        return {self.base}


class ReindexJob(JobSpec):
    kind: ClassVar[JobKind] = "reindex"
    version: str
    # New means from the current corpus, a re-encode with them, no change of the active version: every api
    # swaps to the new means when the worker has written them (state/centering.py).
    recalibrate: bool = False

    def model_names(self) -> set[str]:
        return {self.version}


JOB_SPECS: dict[str, type[JobSpec]] = {
    spec.kind: spec for spec in (FinetuneJob, EvaluateJob, ExperimentJob, ReindexJob)
}


def parse_job(kind: str, params: dict[str, Any]) -> JobSpec:
    """A stored job's parameters as its typed spec; ValueError names what does not fit."""
    if kind not in JOB_SPECS:
        raise ValueError(f"unknown job type {kind!r}")
    return JOB_SPECS[kind].model_validate(params)

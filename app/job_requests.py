"""Job requests checked and turned into typed jobs (`xling.state.jobs`) before anything is queued: each problem is a
422 with its reason."""

from __future__ import annotations

import re
import uuid
from typing import Any

from xling.app.schemas import EvaluateRequest, ExperimentRequest, FinetuneRequest, GuardIn, ReindexRequest
from xling.models.adapters.config import AdapterConfig
from xling.models.data.parallel import check_shape
from xling.models.data.text import DataError
from xling.models.evaluation.guards import BITEXT_METRICS, LAREQA_METRICS, Guard
from xling.models.training.config import TrainConfig
from xling.state.datasets import dataset_info, training_shape
from xling.state.errors import InvalidInput
from xling.state.jobs import EvaluateJob, ExperimentConfig, ExperimentJob, FinetuneJob, ReindexJob, as_list
from xling.state.registry import Registry
from xling.state.settings import Settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model(name: str, settings: Settings, registry: Registry) -> None:
    if name == "active" or registry.has(name):
        return
    if _HUB_ID.match(name):
        if settings.allow_hub_models:
            return
        raise InvalidInput(f"base model {name!r}: hub models are not allowed here (XLING_ALLOW_HUB_MODELS=false)")
    raise InvalidInput(f"model {name!r} is not 'active', a registry version (GET /models) or a hub id")


def _dataset(name: str, settings: Settings) -> dict[str, Any]:
    """The dataset's upload record; it was validated with its loader then, so it is not parsed again here."""
    info = dataset_info(settings.datasets_dir, name)
    if info is None:
        raise InvalidInput(f"no dataset {name!r} (GET /datasets lists them; POST /datasets uploads one)")
    return info


def _check_eval_sets(names: list[str], settings: Settings) -> None:
    for name in names:
        _dataset(name, settings)  # any uploaded dataset evaluates: QA as LAReQA, bitext as accuracy@1


def _check_training_sets(names: list[str], settings: Settings, strategies: list[str], alpha: float) -> None:
    shape = training_shape([_dataset(name, settings) for name in names])
    try:
        for strategy in strategies:
            check_shape(shape, strategy, alpha)
    except DataError as exc:
        raise InvalidInput(f"dataset {', '.join(repr(n) for n in names)}: {exc}") from None


def _check_adapter_sets(langs: list[str], datasets: list[str], settings: Settings) -> None:
    """Adapters learn from bitext alone, and each language needs a pair that has it."""
    found: set[str] = set()
    for name in datasets:
        info = _dataset(name, settings)
        if info["kind"] != "bitext":
            raise InvalidInput(f"dataset {name!r} is {info['kind']}: adapters train on bitext (sentence pairs) only")
        found.update(info["summary"]["languages"])
    missing = [lang for lang in langs if lang not in found]
    if missing:
        raise InvalidInput(f"adapters {missing}: no training dataset has that language (they have {sorted(found)})")
    if len(set(langs)) != len(langs):
        raise InvalidInput(f"adapters {langs}: a language is listed twice")


def finetune_job(request: FinetuneRequest, settings: Settings, registry: Registry) -> FinetuneJob:
    check_model(request.base, settings, registry)
    datasets = as_list(request.dataset)
    if request.adapters:
        _check_adapter_sets(request.adapters, datasets, settings)
        try:
            (request.adapter_config or AdapterConfig()).validate()
        except ValueError as exc:
            raise InvalidInput(f"adapter_config: {exc}") from None
    else:
        _check_training_sets(datasets, settings, [request.strategy], request.alpha)
        if request.adapter_config is not None:
            raise InvalidInput("adapter_config is for a job with adapters; this one tunes the shared weights")
    if request.deploy == "if_better" and not request.eval_datasets:
        raise InvalidInput("deploy 'if_better' needs eval_datasets to compare the new model with the active one")
    _check_eval_sets(request.eval_datasets, settings)
    if request.compare_on is not None and request.compare_on not in request.eval_datasets:
        raise InvalidInput(f"compare_on {request.compare_on!r} must be one of eval_datasets {request.eval_datasets}")
    lareqa_sets = [n for n in request.eval_datasets if _dataset(n, settings)["kind"] != "bitext"]
    compare_on = request.compare_on
    if request.adapters and compare_on is None and request.deploy == "if_better":
        # An adapter changes nothing in the LAReQA sets' languages: compare on a held-out set of its own.
        compare_on = next((n for n in request.eval_datasets if _dataset(n, settings)["kind"] == "bitext"
                           and set(request.adapters) & set(_dataset(n, settings)["summary"]["languages"])), None)
        if compare_on is None:
            raise InvalidInput("deploy 'if_better' with adapters compares on a bitext eval dataset in an adapter's "
                               "language: add one to eval_datasets (or name it with compare_on)")
    if request.deploy == "if_better" and compare_on is None and not lareqa_sets:
        raise InvalidInput("eval_datasets are all bitext: name the one to compare on with compare_on")
    version = request.version or f"ft-{uuid.uuid4().hex[:10]}"
    if (settings.models_dir / version).exists():
        raise InvalidInput(f"version {version!r} already exists")
    # The request's training fields are TrainConfig's own, checked when the request was read.
    config = TrainConfig(**request.model_dump(include=set(TrainConfig.model_fields)))
    if request.bitext_passes is not None and not any(_dataset(n, settings)["kind"] == "bitext" for n in datasets):
        raise InvalidInput("bitext_passes counts passes over a bitext training dataset; this job has none")
    if request.mixing is not None:
        unknown = sorted(set(request.mixing) - set(datasets))
        if unknown:
            raise InvalidInput(f"mixing names {unknown}, which are not training datasets of this job {datasets}")
        if not any(request.mixing.get(name, 0) > 0 for name in datasets):
            raise InvalidInput("mixing gives every training dataset a share of 0")
    guards = None if request.guards is None else _guards(request.guards, request.eval_datasets, settings)
    if guards and request.deploy != "if_better":
        raise InvalidInput("guards decide deploy 'if_better'; with another deploy mode they would do nothing")
    return FinetuneJob(
        dataset=datasets, base=request.base, config=config, eval_datasets=request.eval_datasets,
        deploy=request.deploy, compare_on=compare_on, guards=guards, guard_max_drop=request.guard_max_drop,
        version=version, adapters=request.adapters, adapter_config=request.adapter_config or AdapterConfig(),
    )


def _guards(requested: list[GuardIn], eval_datasets: list[str], settings: Settings) -> list[Guard]:
    """Each guard names an eval dataset of this job and a metric that dataset's kind reports."""
    guards = []
    for guard in requested:
        name, metric = guard.metric.rsplit(":", 1)
        if name not in eval_datasets:
            raise InvalidInput(f"guard {guard.metric!r}: {name!r} is not one of eval_datasets {eval_datasets}")
        kind = "bitext" if _dataset(name, settings)["kind"] == "bitext" else "lareqa"
        known = BITEXT_METRICS if kind == "bitext" else LAREQA_METRICS
        if metric not in known:
            raise InvalidInput(f"guard {guard.metric!r}: a {kind} set reports {', '.join(known)}")
        guards.append(Guard(guard.metric, guard.max_drop))
    return guards


def evaluate_job(request: EvaluateRequest, settings: Settings, registry: Registry) -> EvaluateJob:
    check_model(request.model, settings, registry)
    _check_eval_sets(request.datasets, settings)
    return EvaluateJob(model=request.model, datasets=request.datasets, centering=request.centering, mode=request.mode)


def experiment_job(request: ExperimentRequest, settings: Settings, registry: Registry) -> ExperimentJob:
    check_model(request.base, settings, registry)
    train = as_list(request.train_dataset)
    # the experiment trains all three strategies
    _check_training_sets(train, settings, ["monolingual", "crosslingual", "hybrid"], request.alpha)
    _check_eval_sets(request.eval_datasets, settings)
    if set(train) & set(request.eval_datasets):
        raise InvalidInput("the training dataset cannot also be an evaluation dataset")
    config = ExperimentConfig(
        batch_size=request.batch_size, learning_rate=request.learning_rate, alpha=request.alpha,
        max_length=request.max_length, val_fraction=0.0, freeze_embeddings=request.freeze_embeddings,
    )
    return ExperimentJob(
        train_dataset=train, eval_datasets=request.eval_datasets, base=request.base, steps=request.steps,
        seeds=request.seeds or [request.seed], config=config,
    )


def reindex_job(request: ReindexRequest, registry: Registry, settings: Settings, default_version: str) -> ReindexJob:
    """A recalibration may also name the configured default (it serves without being in the registry)."""
    if request.recalibrate and not settings.centering:
        raise InvalidInput("recalibrate needs centring on (XLING_CENTERING)")
    known = registry.has(request.version) or (request.recalibrate and request.version == default_version)
    if not known:
        raise InvalidInput(f"{request.version!r} is not a registry version (GET /models)")
    return ReindexJob(version=request.version, recalibrate=request.recalibrate)

"""Job parameters checked before anything is queued: each problem is a 422 with its reason."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict
from typing import Any

from app.datasets import dataset_path
from app.errors import InvalidInput
from app.registry import Registry
from app.schemas import EvaluateRequest, ExperimentRequest, FinetuneRequest, ReindexRequest
from app.settings import Settings
from models.data import DataError, check_strategy, load_parallel
from models.lareqa import load_lareqa
from models.training import TrainConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_model(name: str, settings: Settings, registry: Registry) -> None:
    if name == "active" or registry.has(name):
        return
    if _HUB_ID.match(name):
        if settings.allow_hub_models:
            return
        raise InvalidInput(f"base model {name!r}: hub models are not allowed here (XLING_ALLOW_HUB_MODELS=false)")
    raise InvalidInput(f"model {name!r} is not 'active', a registry version (GET /models) or a hub id")


def _training_data(name: str, settings: Settings) -> Any:
    path = dataset_path(settings.datasets_dir, name)
    if path is None:
        raise InvalidInput(f"no dataset {name!r} (GET /datasets lists them; POST /datasets uploads one)")
    return path


def _check_eval_sets(names: list[str], settings: Settings) -> None:
    for name in names:
        path = _training_data(name, settings)
        try:
            load_lareqa(path)
        except (DataError, KeyError) as exc:
            raise InvalidInput(f"evaluation dataset {name!r} is not a LAReQA folder: {exc}") from None


def finetune_params(request: FinetuneRequest, settings: Settings, registry: Registry) -> dict[str, Any]:
    check_model(request.base, settings, registry)
    path = _training_data(request.dataset, settings)
    try:
        groups, _ = load_parallel(path)
        check_strategy(groups, request.strategy, request.alpha)
    except DataError as exc:
        raise InvalidInput(f"dataset {request.dataset!r}: {exc}") from None
    if request.deploy == "if_better" and not request.eval_datasets:
        raise InvalidInput("deploy 'if_better' needs eval_datasets to compare the new model with the active one")
    _check_eval_sets(request.eval_datasets, settings)
    version = request.version or f"ft-{uuid.uuid4().hex[:10]}"
    if (settings.models_dir / version).exists():
        raise InvalidInput(f"version {version!r} already exists")
    config = TrainConfig(
        strategy=request.strategy, alpha=request.alpha, batch_size=request.batch_size,
        learning_rate=request.learning_rate, weight_decay=request.weight_decay, warmup_ratio=request.warmup_ratio,
        epochs=request.epochs, max_steps=request.max_steps, max_length=request.max_length,
        val_fraction=request.val_fraction, checkpoint_steps=request.checkpoint_steps, seed=request.seed,
    )  # fmt: skip
    try:
        config.validate()
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return {
        "dataset": request.dataset,
        "base": request.base,
        "config": asdict(config),
        "eval_datasets": request.eval_datasets,
        "deploy": request.deploy,
        "version": version,
    }


def evaluate_params(request: EvaluateRequest, settings: Settings, registry: Registry) -> dict[str, Any]:
    check_model(request.model, settings, registry)
    _check_eval_sets(request.datasets, settings)
    return request.model_dump()


def experiment_params(request: ExperimentRequest, settings: Settings, registry: Registry) -> dict[str, Any]:
    check_model(request.base, settings, registry)
    _training_data(request.train_dataset, settings)
    _check_eval_sets(request.eval_datasets, settings)
    if request.train_dataset in request.eval_datasets:
        raise InvalidInput("the training dataset cannot also be an evaluation dataset")
    config = {"batch_size": request.batch_size, "learning_rate": request.learning_rate, "alpha": request.alpha,
              "max_length": request.max_length, "val_fraction": 0.0}  # fmt: skip
    return {"train_dataset": request.train_dataset, "eval_datasets": request.eval_datasets, "base": request.base,
            "steps": request.steps, "seed": request.seed, "config": config}  # fmt: skip


def reindex_params(request: ReindexRequest, registry: Registry) -> dict[str, Any]:
    if not registry.has(request.version):
        raise InvalidInput(f"{request.version!r} is not a registry version (GET /models)")
    return {"version": request.version}

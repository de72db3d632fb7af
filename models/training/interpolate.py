"""Weight interpolation between a base model and its fine-tuned version (WiSE-FT, Wortsman et al. 2022).

θ(λ) = (1 − λ) · θ_base + λ · θ_tuned, per tensor. λ = 0 is the base and λ = 1 the tuned model, exactly: the
formula adds an exact zero at both ends. Fine-tuning on a little data moves the weights a short way along a
direction that helps the new data and hurts what the base did well; part of the way along it often keeps most
of the gain and little of the loss. The weight is chosen on a validation split, under guards
(`xling.models.evaluation.guards`): the best objective among the weights whose guarded metrics did not fall.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from xling.models.data.parallel import ParallelGroup
from xling.models.encoder import Encoder, read_layout
from xling.models.evaluation.guards import DEFAULT_MAX_DROP, Guard, GuardCheck, all_passed, check_guards
from xling.models.evaluation.validation import (
    validation_guards,
    validation_metrics,
    validation_objective,
    validation_tie_break,
)
from xling.models.training.config import DEFAULT_WEIGHTS

WEIGHTS_FILE = "model.safetensors"


def interpolate_state(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """(1 − weight) · base + weight · tuned for every floating-point tensor; other tensors (ids, buffers of
    integers) are the tuned model's. Both must hold the same tensors with the same shapes."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {weight}")
    if base.keys() != tuned.keys():
        differ = sorted(base.keys() ^ tuned.keys())
        raise ValueError(f"base and tuned models hold different tensors (e.g. {differ[0]!r})")
    mixed: dict[str, torch.Tensor] = {}
    for name, after in tuned.items():
        before = base[name]
        if before.shape != after.shape:
            raise ValueError(f"{name}: base shape {tuple(before.shape)} differs from tuned {tuple(after.shape)}")
        if after.is_floating_point():
            # In float32, whatever the stored dtype, so bf16 weights do not lose the small difference.
            value = (1.0 - weight) * before.float() + weight * after.float()
            mixed[name] = value.to(after.dtype).contiguous()
        else:
            mixed[name] = after
    return mixed


def _weights_file(folder: Path) -> Path:
    path = read_layout(folder).transformer_dir / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {WEIGHTS_FILE} (interpolation reads safetensors weights only)")
    return path


def write_interpolated(base: Path, tuned: Path, out: Path, weight: float) -> Path:
    """A model folder at `out`: the tuned folder (tokenizer, pooling, manifest) with interpolated weights."""
    mixed = interpolate_state(load_file(str(_weights_file(base))), load_file(str(_weights_file(tuned))), weight)
    if out.resolve() != tuned.resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tuned, out, ignore=shutil.ignore_patterns("checkpoints"))
    save_file(mixed, str(_weights_file(out)), metadata={"format": "pt"})
    return out


@dataclass
class WeightTrial:
    weight: float
    metrics: dict[str, float]
    guards: list[GuardCheck]

    @property
    def passed(self) -> bool:
        return all_passed(self.guards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight, "metrics": self.metrics, "passed": self.passed,
            "guards": [g.to_dict() for g in self.guards],
        }


@dataclass
class InterpolationChoice:
    weight: float  # 0.0 when no tried weight kept every guard: the base model is the answer
    objective: str
    base_metrics: dict[str, float]
    trials: list[WeightTrial] = field(default_factory=list)
    tie_break: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "wise-ft", "weight": self.weight, "objective": self.objective, "tie_break": self.tie_break,
            "base_metrics": self.base_metrics, "trials": [t.to_dict() for t in self.trials],
        }


def choose_weight(
    measure: Callable[[float], dict[str, float]],
    objective: str,
    guards: list[Guard],
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    tie_break: str | None = None,
) -> InterpolationChoice:
    """Measure the base (λ = 0) and each weight; pick the best `objective` among weights that keep every guard.

    `measure(λ)` returns flat metrics ("<set>:<metric>") of the model interpolated at λ. Weights with the same
    objective are told apart by `tie_break` (higher wins) when given; remaining ties go to the smaller weight
    (closer to the base). When no weight keeps the guards, or none beats the base, the choice is 0.
    """
    if not weights or any(not 0.0 < w <= 1.0 for w in weights):
        raise ValueError(f"interpolation weights must be in (0, 1], got {weights}")
    base_metrics = measure(0.0)
    for metric in (objective, tie_break):
        if metric is not None and metric not in base_metrics:
            raise ValueError(f"objective {metric!r} is not measured (have {', '.join(sorted(base_metrics))})")

    def rank(metrics: dict[str, float]) -> tuple[float, float]:
        return metrics[objective], metrics[tie_break] if tie_break is not None else 0.0

    choice = InterpolationChoice(0.0, objective, base_metrics, tie_break=tie_break)
    best = rank(base_metrics)
    for weight in sorted(set(weights)):
        metrics = measure(weight)
        trial = WeightTrial(weight, metrics, check_guards(guards, base_metrics, metrics))
        choice.trials.append(trial)
        if trial.passed and rank(metrics) > best:
            choice.weight, best = weight, rank(metrics)
    return choice


def interpolate_on_validation(
    base: Path,
    tuned: Path,
    groups: list[ParallelGroup],
    *,
    centering: bool,
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    max_drop: float = DEFAULT_MAX_DROP,
    device: str = "auto",
    out: Path | None = None,
) -> InterpolationChoice:
    """Choose the weight on validation groups (`xling.models.evaluation.validation`), then write the model
    interpolated at it to `out` (default: over `tuned`'s weights). Every trial, the base's included, runs with
    the tuned folder's tokenizer, prefixes and pooling: only the weights move."""
    scratch = tuned.parent / f".{tuned.name}.interpolating"

    def measure(weight: float) -> dict[str, float]:
        folder = tuned if weight == 1.0 else write_interpolated(base, tuned, scratch, weight)
        encoder = Encoder(folder, version=f"{tuned.name}-wise-ft-{weight:g}", device=device)
        return validation_metrics(encoder.encode, groups, centering)

    try:
        choice = choose_weight(measure, validation_objective(groups), validation_guards(groups, max_drop), weights,
                               tie_break=validation_tie_break(groups))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    target = out or tuned
    if choice.weight != 1.0 or target.resolve() != tuned.resolve():
        write_interpolated(base, tuned, target, choice.weight)
    return choice

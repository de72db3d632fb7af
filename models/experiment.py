"""Strategy experiment: base vs X-X-mono vs X-Y vs hybrid, same data, steps, seed and hyper-parameters.

Reproduces the shape of the hybrid-batch paper's Tables 1, 2, 7 and 8: one row per model, Mono /
Cross / Multi mAP and rank distance per evaluation set, the best of each column marked.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from models.data import DataError, fingerprint, load_parallel
from models.encoder import Encoder
from models.evaluate import EvaluationReport, evaluate, folder_fingerprint
from models.lareqa import load_lareqa
from models.reports import experiment_markdown, write_evaluation_report, write_experiment_chart
from models.resolve import resolve_model
from models.training import TrainConfig, finetune

STRATEGY_ROWS = [("monolingual", "X-X-mono"), ("crosslingual", "X-Y"), ("hybrid", "hybrid")]
_PACKAGES = ["xling-search", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu-cu12", "numpy"]


@dataclass
class ExperimentSpec:
    train: Path
    evals: list[Path]
    base: str | None
    steps: int
    seed: int = 0
    config: TrainConfig | None = None  # strategy, max_steps and seed are set per run
    langs: list[str] | None = None


def check_no_overlap(train: Path, evals: list[Path]) -> None:
    """Evaluation sets are never trained on: refuse the same folder, or shared question ids."""
    train_ids = {g.id for g in load_parallel(train)[0]}
    for folder in evals:
        if folder.resolve() == train.resolve():
            raise DataError(f"{folder} is both training and evaluation data")
        shared = train_ids & set(load_lareqa(folder).question_ids)
        if shared:
            raise DataError(
                f"{len(shared)} question ids of {folder} are in the training data (e.g. {sorted(shared)[0]})"
            )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _row(label: str, report: EvaluationReport) -> dict[str, Any]:
    return {
        "label": label,
        "model_version": report.model_version,
        "sets": {ev.name: ev.result.metrics for ev in report.lareqa},
    }


def run_experiment(
    spec: ExperimentSpec,
    out: Path,
    *,
    registry_dir: Path | None = None,
    device: str | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the three strategies, evaluate them and the base; write experiment.{json,md,png} under `out`."""
    say = progress or (lambda _: None)
    check_no_overlap(spec.train, spec.evals)
    base_config = spec.config or TrainConfig()
    base_config.validate()
    started = time.monotonic()
    source = resolve_model(spec.base, registry_dir or Path("/nonexistent"))

    def evaluate_model(folder: Path, version: str, label: str) -> EvaluationReport:
        say(f"evaluating {label}")
        encoder = Encoder(folder, version=version, device=device or "auto", name_hint=source.name)
        report = evaluate(encoder.encode, version, spec.evals, langs=spec.langs)
        write_evaluation_report(report, out / "models" / label)
        return report

    reports = [("base", evaluate_model(source.path, source.version, "base"))]
    configs = {}
    for strategy, folder_label in STRATEGY_ROWS:
        config = replace(base_config, strategy=strategy, max_steps=spec.steps, seed=spec.seed)
        configs[folder_label] = asdict(config)
        say(f"training {folder_label} ({spec.steps} steps)")
        result = finetune(
            spec.base, spec.train, out / "models" / folder_label / "model", config, registry_dir=registry_dir,
            device=device, version=f"{source.version}-{strategy}",
        )  # fmt: skip
        assert result.path is not None and result.version is not None
        label = f"hybrid (α={config.alpha:g})" if strategy == "hybrid" else folder_label
        reports.append((label, evaluate_model(result.path, result.version, folder_label)))

    set_names = [ev.name for ev in reports[0][1].lareqa]
    rows = [_row(label, report) for label, report in reports]
    markdown = experiment_markdown(rows, set_names)
    write_experiment_chart(rows, set_names, out / "experiment.png")
    train_groups, _ = load_parallel(spec.train)
    record = {
        "command": command,
        "rows": rows,
        "full_results": {label: report.to_dict() for label, report in reports},
        "base_model": source.name,
        "steps": spec.steps,
        "seed": spec.seed,
        "train_configs": configs,
        "data": {
            "train": {"path": str(spec.train), "fingerprint": fingerprint(train_groups)},
            "evals": {str(folder): folder_fingerprint(folder) for folder in spec.evals},
        },
        "versions": versions(),
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "experiment.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    header = (
        f"# Strategy experiment\n\n`{command}`\n\nBase model `{source.name}`, {spec.steps} steps, seed {spec.seed}.\n\n"
    )
    (out / "experiment.md").write_text(header + markdown + "\n![mAP by strategy](experiment.png)\n")
    return record

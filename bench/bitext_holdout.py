"""A rare-language user's loop: parallel sentences for one language, part held out, tune on the rest.

From MLQA-R, each question id present in --lang and --pivot gives two sentence pairs (the two
questions, and the two answer sentences). Pairs are split by question id: --holdout of the ids are
held out as a Tatoeba-layout bitext set, the rest are written as bitext JSONL for training. The base
model and the model tuned on the training pairs (X-Y batches, since bitext has no monolingual pairs)
are scored on the held-out pairs (accuracy@1, both directions) and on XQuAD-R (zero-shot LAReQA).
Results go to --out as each part finishes; a re-run skips the parts already there.

    python -m bench.bitext_holdout --lang zh --steps 150 --batch-size 32 --out bench/results/bitext_holdout_zh
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import bench_data_dir, default_model
from xling.models.data.parallel import load_lareqa_folder
from xling.models.encoder import Encoder
from xling.models.evaluation.evaluate import eval_set, evaluate
from xling.models.evaluation.reports import write_evaluation_report
from xling.models.files import write_json_atomic
from xling.models.training.trainer import TrainConfig, finetune


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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["command"] = (
        f"python -m bench.bitext_holdout --lang {args.lang} --pivot {args.pivot} --holdout {args.holdout} "
        f"--steps {args.steps} --batch-size {args.batch_size} --max-length {args.max_length} --seed {args.seed} "
        f"--out {args.out}"
    )
    if "split" not in results:
        results["split"] = write_bitext(data, args.lang, args.pivot, args.holdout, args.seed, args.out)
        write_json_atomic(results_path, results)
    source = default_model()
    results["base_model"] = source.version
    sets = [eval_set(args.out / "heldout", name=f"heldout-{args.lang}"), eval_set(data / "xquad-r")]

    def score(folder: Path, version: str, label: str) -> None:
        if label in results:
            return
        started = time.monotonic()
        report = evaluate(Encoder(folder, version=version, device="cpu").encode, version, sets)
        write_evaluation_report(report, args.out / label)
        results[label] = {"sets": report.set_metrics(), "seconds": round(time.monotonic() - started, 1)}
        write_json_atomic(results_path, results)
        print(label, json.dumps(results[label]["sets"], indent=1))

    score(source.path, source.version, "before")
    if "after" not in results:
        tuned = args.out / "model"
        shutil.rmtree(tuned, ignore_errors=True)
        config = TrainConfig(
            strategy="crosslingual", batch_size=args.batch_size, max_steps=args.steps, max_length=args.max_length,
            val_fraction=0.0, seed=args.seed, freeze_embeddings=True, checkpoint_steps=10**9,
        )
        result = finetune(str(source.path), args.out / "train.jsonl", tuned, config, device="cpu")
        assert result.path is not None and result.version is not None
        results["training"] = {"config": asdict(config), "metrics": result.metrics}
        score(result.path, result.version, "after")
        shutil.rmtree(tuned, ignore_errors=True)  # weights are not kept in the repository
    write_json_atomic(results_path, results)
    held = f"heldout-{args.lang}"
    for label in ("before", "after"):
        sets_ = results[label]["sets"]
        x = sets_["xquad-r"]
        print(
            f"{label:6s} {held} acc@1 {sets_[held]['bitext_acc@1']:.3f} | XQuAD-R mono {x['mono_map']:.3f} "
            f"cross {x['cross_map']:.3f} multi {x['multi_map']:.3f} rank distance {x['rank_distance']:.1f}"
        )


if __name__ == "__main__":
    main()

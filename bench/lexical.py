"""Dense, lexical and fused retrieval on LAReQA sets, raw and centred: does BM25 give back the Mono mAP that
fine-tuning costs without giving back the language bias centring removed?

Every score goes through the serving code: BM25 from the lexical index (one partition per language, ICU words,
Snowball stemmers), fusion as in xling.models.index.fusion, centring on each language's candidate
mean (queries on their own language's, as with a known `lang`). Encoded vectors are cached in --cache.

    python -m bench.lexical --out bench/results/lexical_e5
    python -m bench.lexical --model data/models/<version> --out bench/results/lexical_<version>
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.centering import CachedEncoder
from bench.common import bench_data_dir, default_model
from xling.models.centering import center, language_means
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.evaluation.modes import RetrievalMode, lexical_matrix, rescorer
from xling.models.files import write_json_atomic
from xling.models.index.fusion import Fusion
from xling.models.resolve import resolve_model

HEADLINE = ("mono_map", "cross_map", "multi_map", "rank_distance")
WEIGHTS = (0.02, 0.03, 0.05, 0.055, 0.06, 0.07, 0.1, 0.2)
RRF_WINDOWS = (100, 1000)


def modes() -> list[RetrievalMode]:
    return [
        RetrievalMode("dense"),
        RetrievalMode("lexical"),
        *(RetrievalMode("hybrid", Fusion("weighted", weight=w, normalise="query")) for w in WEIGHTS),
        *(RetrievalMode("hybrid", Fusion("weighted", weight=w, normalise="language")) for w in WEIGHTS),
        *(RetrievalMode("hybrid", Fusion("rrf", rrf_k=60, window=n)) for n in RRF_WINDOWS),
    ]


def vectors(data: LareqaData, encoder: CachedEncoder, centred: bool) -> tuple[np.ndarray, np.ndarray]:
    queries = encoder.encode(data.question_texts, "query")
    docs = encoder.encode(data.candidate_texts, "passage")
    if not centred:
        return queries, docs
    doc_langs = [data.languages[i] for i in data.candidate_langs]
    means = language_means(docs, doc_langs)
    return center(queries, [data.languages[i] for i in data.question_langs], means), center(docs, doc_langs, means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--model", help="a registry version or model folder (default: the served default, e5)")
    parser.add_argument("--sets", nargs="+", default=["xquad-r", "mlqa-r"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/lexical_e5"))
    parser.add_argument("--modes", nargs="+", help="only the rows whose retrieval label is one of these, e.g. "
                        "lexical 'hybrid weighted 0.055, per language' (default: every mode)")
    parser.add_argument("--cache", type=Path, help="encoded vectors (default: /tmp/xling-lexical-<model>.npz)")
    args = parser.parse_args()
    data_dir = bench_data_dir(args.data)
    source = resolve_model(args.model, None) if args.model else default_model()
    encoder = CachedEncoder(args.cache or Path(f"/tmp/xling-lexical-{source.version}.npz"), source)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.update({
        "command": "python -m bench.lexical " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v is not None and k not in ("cache", "modes"))
        + (" --modes " + shlex.join(args.modes) if args.modes else ""),
        "model": source.version, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
    })
    rows: dict[str, Any] = results.setdefault("rows", {})
    for name in args.sets:
        data = load_lareqa(data_dir / name)
        started = time.perf_counter()
        bm25 = lexical_matrix(data)
        results.setdefault("lexical_seconds", {})[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {data.size}; BM25 matrix in {results['lexical_seconds'][name]} s", flush=True)
        for centred in (False, True):
            queries, docs = vectors(data, encoder, centred)
            for mode in (m for m in modes() if not args.modes or m.label in args.modes):
                key = f"{name} | {'centred' if centred else 'raw'} | {mode.label}"
                if key in rows:
                    continue
                rescore = rescorer(mode, bm25, data.candidate_langs)
                metrics = lareqa_metrics(data, queries, docs, rescore=rescore).metrics
                rows[key] = {metric: round(float(metrics[metric]), 4) for metric in HEADLINE}
                print(key, rows[key], flush=True)
                write_json_atomic(results_path, results)
    (args.out / "results.md").write_text(table(results), encoding="utf-8")


def table(results: dict[str, Any]) -> str:
    lines = [f"Model {results['model']}; {results['date']}; {results['machine']}.", "",
             f"    {results['command']}", "",
             "| set | vectors | retrieval | Mono | Cross | Multi | rank distance |", "|---|---|---|---|---|---|---|"]
    for key, row in results["rows"].items():
        lines.append(f"| {' | '.join(key.split(' | '))} | " + " | ".join(f"{row[m]:g}" for m in HEADLINE) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Lexical retrieval inside Qdrant against xling's tantivy index, on a LAReQA set's monolingual retrieval: does
the BM25 that `XLING_LEXICAL_ENGINE=qdrant` serves (sparse vectors with the IDF modifier, the IDF taken over
the query language's partition) rank as the per-language tantivy partitions do?

Both sides analyse text alike (`models/index/analysis.py`). The Qdrant side is the serving code: documents
written through `QdrantIndex.upsert` in batches of `--batch` (the applier's batch by default), each batch with
the running mean length of its partition, and searched through `QdrantLexical`. Each language gets its own
collection here: the serving path scopes the IDF to the query's partition (tests/models/test_qdrant_lexical.py
shows one collection of many languages scoring as tantivy does), and qdrant-client's embedded local mode
counts a filtered corpus's statistics in Python for every query, which one collection per language keeps
short. Runs on the local mode (the same formulas as the server's; the server was not run here). Only
same-language scores are compared: the Mono columns.

    python -m bench.qdrant_sparse --sets xquad-r --batch 512 --out bench/results/qdrant_sparse_serving.json
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from bench.common import bench_data_dir
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.evaluation.modes import lexical_matrix
from xling.models.files import write_json_atomic
from xling.models.index.qdrant_index import QdrantIndex, create_collection
from xling.models.index.qdrant_lexical import QdrantLexical
from xling.models.index.slots import DocEntry
from xling.models.index.sparse import MemoryLengths


def qdrant_matrix(data: LareqaData, rows: np.ndarray, batch: int) -> np.ndarray:
    """(questions, candidates) BM25 from Qdrant for the questions in `rows` (others left 0), each question
    against its own language's candidates, written `batch` documents at a time in the data's order."""
    matrix = np.zeros((len(data.question_texts), len(data.candidate_texts)), dtype=np.float32)
    for li, lang in enumerate(data.languages):
        columns = np.flatnonzero(data.candidate_langs == li)
        client = QdrantClient(location=":memory:")
        create_collection(client, lang, 1, lexical=True)  # a 1-d dense vector: only the BM25 side is read here
        index = QdrantIndex(client, lang, 1, "bench", lengths=MemoryLengths())
        for start in range(0, len(columns), batch):
            part = columns[start : start + batch]
            index.upsert(
                [DocEntry(str(c), lang) for c in part], np.ones((len(part), 1), dtype=np.float32),
                texts=[data.candidate_texts[c] for c in part],
            )
        lexical = QdrantLexical(index)
        for row in rows[data.question_langs[rows] == li]:
            for hits in lexical.per_partition(data.question_texts[row], len(columns), [lang]).values():
                for hit in hits:
                    matrix[row, int(hit.ext_id)] = hit.score
        client.close()
    return matrix


def mono(data: LareqaData, bm25: np.ndarray) -> dict[str, float]:
    blank_q, blank_c = np.zeros((len(data.question_texts), 1)), np.zeros((len(data.candidate_texts), 1))
    metrics = lareqa_metrics(data, blank_q, blank_c, rescore=lambda rows, cosines: bm25[rows]).metrics
    return {"mono_map": round(float(metrics["mono_map"]), 4)}


def agreement(data: LareqaData, ours: np.ndarray, theirs: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Per question in `rows`, over its language's candidates: whether both put the same candidate first, and
    how far the scores are apart relative to the best."""
    top1, gaps = [], []
    for row in rows:
        li = data.question_langs[row]
        columns = np.flatnonzero(data.candidate_langs == li)
        a, b = ours[row, columns], theirs[row, columns]
        if a.max() <= 0 and b.max() <= 0:
            continue
        top1.append(a.argmax() == b.argmax())
        gaps.append(float(np.abs(a - b).max() / max(a.max(), b.max())))
    return {
        "questions_with_a_match": len(top1),
        "same_top1": round(float(np.mean(top1)), 4),
        "median_relative_score_gap": round(float(np.median(gaps)), 4),
        "max_relative_score_gap": round(float(np.max(gaps)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--sets", nargs="+", default=["xquad-r"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/qdrant_sparse_serving.json"))
    parser.add_argument("--batch", type=int, default=512, help="documents per write (the applier's batch)")
    parser.add_argument(
        "--per-lang",
        type=int,
        help="score only the first N questions of each language (the local "
        "mode recounts the filtered corpus's statistics for every query); Mono mAP needs them all",
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": f"python -m bench.qdrant_sparse --sets {' '.join(args.sets)} --batch {args.batch} --out {args.out}"
        + (f" --per-lang {args.per_lang}" if args.per_lang else ""),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    for name in args.sets:
        data = load_lareqa(bench_data_dir(args.data) / name)
        started = time.perf_counter()
        tantivy = lexical_matrix(data)
        tantivy_s = time.perf_counter() - started
        started = time.perf_counter()
        rows = np.arange(len(data.question_texts))
        if args.per_lang:
            rows = np.concatenate(
                [np.flatnonzero(data.question_langs == li)[: args.per_lang] for li in range(len(data.languages))]
            )
        qdrant = qdrant_matrix(data, rows, args.batch)
        qdrant_s = time.perf_counter() - started
        results[name] = {
            "questions_scored": len(rows),
            "tantivy": {**(mono(data, tantivy) if not args.per_lang else {}), "seconds": round(tantivy_s, 1)},
            "qdrant": {**(mono(data, qdrant) if not args.per_lang else {}), "seconds": round(qdrant_s, 1)},
            "agreement": agreement(data, tantivy, qdrant, rows),
        }
        print(name, results[name], flush=True)
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()

"""Lexical retrieval inside Qdrant against xling's tantivy index, on a LAReQA set's monolingual retrieval: does
Qdrant's server-side BM25 (sparse vectors with the IDF modifier, the IDF taken over the query language's
documents) rank as the per-language tantivy partitions do?

Both sides analyse text alike (`models/index/analysis.py`); Qdrant gets BM25's term-frequency part per document
(`models/index/sparse.py`) and computes the IDF itself. Runs on qdrant-client's embedded local mode (the same
scoring formulas as the server's; the server was not run here). Only same-language scores are compared: the
Mono columns.

    python -m bench.qdrant_sparse --sets xquad-r --out bench/results/qdrant_sparse.json
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from bench.common import bench_data_dir
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.evaluation.lareqa import lareqa_metrics
from xling.models.evaluation.modes import lexical_matrix
from xling.models.files import write_json_atomic
from xling.models.index.sparse import document_length, document_vector, query_vector

COLLECTION, VECTOR = "lexical", "bm25"


def qdrant_matrix(data: LareqaData, rows: np.ndarray) -> np.ndarray:
    """(questions, candidates) BM25 from Qdrant for the questions in `rows` (others left 0), each question
    against its own language's candidates."""
    client = QdrantClient(location=":memory:")
    client.create_collection(
        COLLECTION, vectors_config={}, sparse_vectors_config={VECTOR: qm.SparseVectorParams(modifier=qm.Modifier.IDF)}
    )
    langs = [data.languages[i] for i in data.candidate_langs]
    lengths = np.array([document_length(t, lang) for t, lang in zip(data.candidate_texts, langs, strict=True)])
    avgdl = {lang: float(lengths[data.candidate_langs == i].mean()) for i, lang in enumerate(data.languages)}
    points = [
        qm.PointStruct(
            id=row,
            payload={"lang": lang},
            vector={VECTOR: qm.SparseVector(**vars(document_vector(text, lang, avgdl[lang])))},
        )
        for row, (text, lang) in enumerate(zip(data.candidate_texts, langs, strict=True))
    ]
    for start in range(0, len(points), 1_024):
        client.upsert(COLLECTION, points[start : start + 1_024])
    matrix = np.zeros((len(data.question_texts), len(data.candidate_texts)), dtype=np.float32)
    for row in rows:
        text, li = data.question_texts[row], data.question_langs[row]
        lang = data.languages[li]
        same = qm.Filter(must=[qm.FieldCondition(key="lang", match=qm.MatchValue(value=lang))])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Local mode performs exact")
            hits = client.query_points(
                COLLECTION,
                query=qm.SparseVector(**vars(query_vector(text, lang))),
                using=VECTOR,
                query_filter=same,
                limit=int(np.sum(data.candidate_langs == li)),
                search_params=qm.SearchParams(idf=qm.IdfCorpusParams(corpus=same)),
            ).points
        for hit in hits:
            matrix[row, int(hit.id)] = hit.score
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
    parser.add_argument("--out", type=Path, default=Path("bench/results/qdrant_sparse.json"))
    parser.add_argument(
        "--per-lang",
        type=int,
        help="score only the first N questions of each language (the local "
        "mode recounts the filtered corpus's statistics for every query); Mono mAP needs them all",
    )
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": f"python -m bench.qdrant_sparse --sets {' '.join(args.sets)} --out {args.out}"
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
        qdrant = qdrant_matrix(data, rows)
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

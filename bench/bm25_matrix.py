"""Hybrid search's lexical side two ways, in one process, on bench.lexical_serving's corpus shape (issue 29:
"measure, then choose"): the tantivy index as served today (per query: each language partition's top, then the
BM25 of the dense candidates, one search per partition each), against BM25 from a sparse document × term matrix
per partition (scipy), where a micro-batch of queries is one sparse product per partition and the dense
candidates' BM25 a gather of their rows.

It also checks that the two agree: each partition's top 10 by BM25, the same documents with the same scores (to
1e-3), for every query. The matrix here is built once and never updated: the measure of what search would cost,
not yet an index a service can write to.

    python -m bench.bm25_matrix --docs 100000 --queries 256 --out bench/results/bm25_matrix.json

Its figures in bench/RESULTS.md were measured when `LexicalIndex` was tantivy (before models/index/bm25.py, which
this measurement chose); run today, both sides are sparse matrices.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bench.common import bench_data_dir, lareqa_questions, lareqa_sentences
from xling.models.files import write_json_atomic
from xling.models.index.analysis import terms
from xling.models.index.bm25 import K1, B, quantised_lengths
from xling.models.index.lexical import LexicalDoc, LexicalIndex, partition_of

DEPTH = 100  # the fused ranking's first window: each partition's top this many, and this many dense candidates


@dataclass
class Partition:
    vocabulary: dict[str, int]
    weights: sp.csr_matrix  # documents x terms: IDF(t) * the BM25 term-frequency part
    ids: np.ndarray
    row_of: dict[str, int]


def build_partitions(docs: list[LexicalDoc]) -> dict[str, Partition]:
    """BM25 as tantivy scores it (k1 1.2, b 0.75, IDF over the partition's documents, quantised lengths), per
    partition."""
    grouped: dict[str, list[LexicalDoc]] = {}
    for doc in docs:
        grouped.setdefault(partition_of(doc), []).append(doc)
    built = {}
    for name, members in grouped.items():
        vocabulary: dict[str, int] = {}
        rows, cols, counts, lengths = [], [], [], []
        for row, doc in enumerate(members):
            analysed = terms(doc.text, name)
            lengths.append(len(analysed))
            for term, count in Counter(analysed).items():
                rows.append(row)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                counts.append(count)
        length = np.asarray(lengths, dtype=np.float32)
        row_index, col_index = np.asarray(rows), np.asarray(cols)
        tf = np.asarray(counts, dtype=np.float32)
        # The average is of the exact lengths (tantivy sums the tokens); each document's own length is quantised.
        norm = K1 * (1 - B + B * quantised_lengths(length)[row_index] / length.mean())
        df = np.bincount(col_index, minlength=len(vocabulary)).astype(np.float32)
        idf = np.log(1 + (len(members) - df + 0.5) / (df + 0.5))
        values = idf[col_index] * tf * (K1 + 1) / (tf + norm)
        weights = sp.csr_matrix((values, (row_index, col_index)), shape=(len(members), len(vocabulary)),
                                dtype=np.float32)
        ids = np.asarray([doc.ext_id for doc in members])
        built[name] = Partition(vocabulary, weights, ids, {ext_id: row for row, ext_id in enumerate(ids)})
    return built


def query_matrix(part: Partition, name: str, queries: list[str]) -> sp.csr_matrix:
    rows, cols = [], []
    for row, query in enumerate(queries):
        for term in dict.fromkeys(terms(query, name)):
            col = part.vocabulary.get(term)
            if col is not None:
                rows.append(row)
                cols.append(col)
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)),
                         shape=(len(queries), len(part.vocabulary)))


def matrix_batch(parts: dict[str, Partition], queries: list[str], candidates: list[list[str]], depth: int
                 ) -> list[dict[str, Any]]:
    """Per query: each partition's top `depth` (ids, scores), and the BM25 of its dense candidates (those the
    query's terms reach). Per partition, one sparse product for the tops and one gather for the candidates."""
    out: list[dict[str, Any]] = [{"top": {}, "fill": {}} for _ in queries]
    for name, part in parts.items():
        q = query_matrix(part, name, queries)
        if not q.nnz:
            continue
        scores = (q @ part.weights.T).tocsr()  # queries x documents, only the documents a query term reaches
        for row in range(len(queries)):
            start, end = scores.indptr[row], scores.indptr[row + 1]
            if start == end:
                continue
            values, docs = scores.data[start:end], scores.indices[start:end]
            if len(values) > depth:
                keep = np.argpartition(-values, depth)[:depth]
                values, docs = values[keep], docs[keep]
            out[row]["top"][name] = (part.ids[docs], values)
        pairs = [(row, part.row_of[c]) for row, found in enumerate(candidates) for c in found if c in part.row_of]
        if not pairs:
            continue
        query_rows, doc_rows = (np.asarray(side) for side in zip(*pairs, strict=True))
        gathered = np.asarray(part.weights[doc_rows].multiply(q[query_rows]).sum(axis=1)).ravel()
        for (row, _), doc_row, value in zip(pairs, doc_rows, gathered, strict=True):
            if value > 0:
                out[row]["fill"][part.ids[doc_row]] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=3_000)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bm25_matrix.json"))
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    rng = np.random.default_rng(0)
    pool = lareqa_sentences(data / "mlqa-r") + lareqa_sentences(data / "xquad-r")
    picked = [pool[i] for i in rng.choice(len(pool), size=args.distinct, replace=False)]
    docs = [LexicalDoc(f"d{i}", f"{picked[i % args.distinct][1]} ({i // args.distinct})",
                       picked[i % args.distinct][0], {}) for i in range(args.docs)]
    queries = lareqa_questions(data / "xquad-r" / "en.json")[: args.queries]
    # The dense side's candidates, as a hybrid query gets them: here DEPTH random documents per query.
    candidates = [[f"d{i}" for i in rng.choice(args.docs, size=DEPTH, replace=False)] for _ in queries]

    started = time.perf_counter()
    parts = build_partitions(docs)
    matrix_build_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        index = LexicalIndex(Path(folder))
        started = time.perf_counter()
        for start in range(0, len(docs), 5_000):
            index.upsert(docs[start : start + 5_000])
            index.commit(f"{start}-0")
        tantivy_build_s = time.perf_counter() - started
        started = time.perf_counter()
        served = [(index.per_partition(q, DEPTH), index.scores(q, c)) for q, c in zip(queries, candidates, strict=True)]
        tantivy_ms = (time.perf_counter() - started) / len(queries) * 1000
        index.close()
    matrix_ms: dict[int, float] = {}
    for batch in (1, 16, 64):
        started = time.perf_counter()
        found = []
        for start in range(0, len(queries), batch):
            found += matrix_batch(parts, queries[start : start + batch], candidates[start : start + batch], DEPTH)
        matrix_ms[batch] = (time.perf_counter() - started) / len(queries) * 1000

    disagreements = {"top": 0, "top_lists": 0, "fill": 0, "fill_scores": 0, "largest_difference": 0.0}
    for (tops, fills), mine in zip(served, found, strict=True):
        for name, hits in tops.items():
            _, values = mine["top"].get(name, (np.asarray([]), np.asarray([])))
            theirs = np.asarray(sorted(h.score for h in hits)[-10:])
            ours = np.asarray(sorted(values.astype(float).tolist())[-10:])
            same = len(theirs) == len(ours) and np.allclose(theirs, ours, atol=1e-3)
            disagreements["top"] += int(not same)
            disagreements["top_lists"] += 1
            if len(theirs) == len(ours):
                disagreements["largest_difference"] = max(disagreements["largest_difference"],
                                                          float(np.abs(theirs - ours).max(initial=0.0)))
        for ext_id, hit in fills.items():
            difference = abs(mine["fill"].get(ext_id, 0.0) - hit.score)
            disagreements["fill"] += int(difference > 1e-3)
            disagreements["fill_scores"] += 1
            disagreements["largest_difference"] = max(disagreements["largest_difference"], difference)
    result: dict[str, Any] = {
        "docs": args.docs, "queries": len(queries), "depth": DEPTH,
        "partitions": {name: part.weights.shape[0] for name, part in parts.items()},
        "tantivy_ms_per_query": round(tantivy_ms, 3),
        "matrix_ms_per_query": {str(b): round(ms, 3) for b, ms in matrix_ms.items()},
        "build_s": {"tantivy": round(tantivy_build_s, 1), "matrix": round(matrix_build_s, 1)},
        "disagreements": disagreements,
        "matrix_mb": round(sum(p.weights.data.nbytes + p.weights.indices.nbytes + p.weights.indptr.nbytes
                               for p in parts.values()) / 2**20, 1),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }
    write_json_atomic(args.out, result)
    print(result)


if __name__ == "__main__":
    main()

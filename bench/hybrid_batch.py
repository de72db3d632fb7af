"""What a micro-batch spends beside the encoder, in one process: the dense search of a batch of queries (k 10)
against the hybrid one (the deeper dense fetch, the lexical side, fusion), per query, on bench.lexical_serving's
corpus shape (LAReQA sentences with a copy number, e5 vectors plus small noise, a flat index and the replica's
lexical index), with XQuAD-R questions in English. No HTTP, no encoder in the timed part: what is left is what
hybrid search adds to dense inside the batch. `--check FILE` writes (or, when present, compares with) every
query's fused ranking, so an optimisation can show it changed no result. `--tier qdrant`: the same on
qdrant-client's embedded local mode, with the calls to Qdrant per query counted.

    python -m bench.hybrid_batch --docs 100000 --batches 8 --passes 3 --out bench/results/hybrid_batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from bench.common import bench_data_dir, default_model, lareqa_questions, lareqa_sentences
from xling.models.encoder import Encoder
from xling.models.files import write_json_atomic
from xling.models.index.fusion import Fusion, SearchMode
from xling.models.index.lexical import LexicalDoc, LexicalIndex, LexicalSearch
from xling.models.index.qdrant_index import QdrantIndex, create_collection
from xling.models.index.qdrant_lexical import QdrantLexical
from xling.models.index.slots import DocEntry
from xling.models.index.sparse import MemoryLengths
from xling.models.index.vector_index import VectorIndex
from xling.serving.hybrid import HybridFusion
from xling.state.indexing import ServingPair


class _Query:
    """A hybrid search as fusion reads it, with no filter."""

    def __init__(self, text: str, k: int = 10, mode: SearchMode = "hybrid") -> None:
        self.text, self.k, self.mode = text, k, mode
        self.langs: tuple[str, ...] = ()
        self.where: tuple[tuple[str, Any], ...] = ()
        self.filter_key: tuple[tuple[str, ...], str] = ((), "[]")


class CountingClient:
    """Passes every call through to a Qdrant client, counting them by method: the round trips a search costs."""

    def __init__(self, client: QdrantClient) -> None:
        self.client, self.calls = client, Counter[str]()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self.client, name)


def build(data: Path, docs: int, distinct: int, questions: int, folder: Path, tier: str) -> tuple[
        ServingPair, LexicalSearch, list[str], np.ndarray, CountingClient | None]:
    source = default_model()
    encoder = Encoder(source.path, version=source.version, device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    pool = lareqa_sentences(data / "mlqa-r") + lareqa_sentences(data / "xquad-r")
    picked = [pool[i] for i in rng.choice(len(pool), size=distinct, replace=False)]
    base = encoder.encode([text for _, text in picked], "passage")
    asked = lareqa_questions(data / "xquad-r" / "en.json")[:questions]
    query_vectors = encoder.encode(asked, "query")
    counting: CountingClient | None = None
    index: VectorIndex | QdrantIndex
    if tier == "qdrant":  # the embedded local mode: BM25 from the collection's sparse vectors
        client = QdrantClient(location=":memory:")
        create_collection(client, "bench", encoder.dim, lexical=True)
        index = QdrantIndex(client, "bench", encoder.dim, source.version, lengths=MemoryLengths())
    else:
        index, replica = VectorIndex(encoder.dim, source.version), LexicalIndex(folder)
    for start in range(0, docs, 5_000):
        rows = range(start, min(docs, start + 5_000))
        noise = rng.standard_normal((len(rows), encoder.dim)).astype(np.float32) * 0.02
        vectors = base[[i % distinct for i in rows]] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        lexical_docs = [LexicalDoc(f"d{i}", f"{picked[i % distinct][1]} ({i // distinct})", picked[i % distinct][0])
                        for i in rows]
        entries = [DocEntry(doc.ext_id, doc.lang) for doc in lexical_docs]
        if isinstance(index, QdrantIndex):
            index.upsert(entries, vectors, [doc.text for doc in lexical_docs])
        else:
            index.upsert(entries, vectors)
            replica.upsert(lexical_docs)
    lexical: LexicalSearch
    if isinstance(index, QdrantIndex):
        counting = CountingClient(index.client)
        index.client = lexical_client = counting  # type: ignore[assignment]  # passes every call through
        lexical = QdrantLexical(index)
        lexical.client = lexical_client  # type: ignore[assignment]
    else:
        replica.commit("0-0")
        lexical = replica
    return ServingPair(encoder, index, "0-0"), lexical, asked, query_vectors, counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--tier", choices=["flat", "qdrant"], default="flat",
                        help="flat: FAISS and the replica's lexical index; qdrant: qdrant-client's local mode, BM25 "
                        "from the collection's sparse vectors")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3, help="timed passes over every batch (the fastest counts)")
    parser.add_argument("--check", type=Path, help="fused rankings: written when absent, else compared")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hybrid_batch.json"))
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    with tempfile.TemporaryDirectory(prefix="xling-bench-") as tmp:
        pair, lexical, texts, vectors, counting = build(data, args.docs, args.distinct, args.batch * args.batches,
                                                        Path(tmp), args.tier)
        hybrid = HybridFusion(Fusion(), lambda _: lexical, scans_every_vector=args.tier == "flat",
                              lookups_are_round_trips=args.tier == "qdrant")
        calls: dict[str, dict[str, float]] = {}
        timings: dict[str, list[float]] = {"dense": [], "hybrid": []}  # seconds per pass over every batch
        fused_all: list[list[list[Any]]] = []
        for repeat in range(args.passes + 1):  # the first pass warms caches (query terms, partition matrices)
            fused_all = []
            spent = {"dense": 0.0, "hybrid": 0.0}
            for start in range(0, len(texts), args.batch):
                batch = [_Query(text) for text in texts[start : start + args.batch]]
                rows = vectors[start : start + args.batch]
                called = dict(counting.calls) if counting else {}
                began = time.perf_counter()
                pair.index.search(rows, 10)
                dense_s = time.perf_counter() - began
                dense_calls = dict(counting.calls) if counting else {}
                began = time.perf_counter()
                found = pair.index.search(rows, hybrid.fetch_depth(batch[0]))
                fused = hybrid.fuse_batch(pair, batch, found, rows)
                hybrid_s = time.perf_counter() - began
                if counting and repeat == 0:  # calls per query, by method
                    for mode, before, after in (("dense", called, dense_calls),
                                                ("hybrid", dense_calls, dict(counting.calls))):
                        for method, count in after.items():
                            made = (count - before.get(method, 0)) / len(texts)
                            calls.setdefault(mode, {})[method] = calls.get(mode, {}).get(method, 0) + made
                spent["dense"] += dense_s
                spent["hybrid"] += hybrid_s
                fused_all.extend([[hit.ext_id, round(hit.score, 5)] for hit in fused[row]] for row in range(len(batch)))
            if repeat:
                for mode, seconds in spent.items():
                    timings[mode].append(seconds / len(texts))
        if isinstance(lexical, LexicalIndex):
            lexical.close()
    # The fastest pass of each: what the code costs, with the least interference from the rest of the machine.
    dense_ms, hybrid_ms = (1000 * min(timings[mode]) for mode in ("dense", "hybrid"))
    results: dict[str, Any] = {
        "command": f"python -m bench.hybrid_batch --tier {args.tier} --docs {args.docs} --batch {args.batch} "
                   f"--batches {args.batches} --passes {args.passes}",
        "model": default_model().version, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "dense_ms_per_query": round(dense_ms, 2), "hybrid_ms_per_query": round(hybrid_ms, 2),
        "added_ms_per_query": round(hybrid_ms - dense_ms, 2), "hybrid_vs_dense_qps": round(dense_ms / hybrid_ms, 3),
    }
    if calls:
        results["calls_per_query"] = {mode: {method: round(count, 3) for method, count in made.items() if count}
                                      for mode, made in calls.items()}
    if args.check is not None:
        if args.check.exists():
            expected = json.loads(args.check.read_text())
            results["same_rankings"] = sum(a == b for a, b in zip(expected, fused_all, strict=True))
            results["queries"] = len(fused_all)
        else:
            write_json_atomic(args.check, fused_all)
    write_json_atomic(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

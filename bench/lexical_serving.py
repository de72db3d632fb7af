"""What the lexical index costs a service: ingest rate and size on disk of the lexical index, and search QPS and
p99 of dense, lexical and hybrid requests against one server over the same corpus, in one run; then the naive
baseline (bench/baseline_server.py: one encode and one FAISS search per request) on the same corpus, so that
each mode's QPS is also given against it.

The corpus is bench.search's: real LAReQA sentences (with a copy number) whose vectors are the encoder's plus
small noise; the server builds its lexical index from the documents at start-up (timed). Requests are real
XQuAD-R questions in English, encoded per request.

    python -m bench.lexical_serving --docs 100000 --clients 32 --seconds 30 --out bench/results/lexical_serving.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.common import (
    bench_data_dir,
    closed_loop,
    default_model,
    lareqa_questions,
    lareqa_sentences,
    server_process,
    xling_serve_args,
)
from bench.million import rss_mb
from bench.search import measure, seed_corpus
from xling.models.files import write_json_atomic
from xling.models.index.lexical import LexicalDoc, LexicalIndex
from xling.state.docstore import StoredDoc
from xling.state.embedded_redis import EmbeddedRedis, free_port
from xling.state.indexing import lexical_docs
from xling.state.keys import RedisKeys

MODES = ("dense", "lexical", "hybrid")
BATCH = 512  # the applier's default batch: one commit per batch, as the service writes


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ingest(redis_url: str, folder: Path) -> dict[str, Any]:
    """Every document through the lexical index in applier-sized batches, each committed: documents per second."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    docs = [(doc_id, StoredDoc.from_json(raw)) for doc_id, raw in client.hgetall(RedisKeys().docs).items()]
    client.close()
    index = LexicalIndex(folder)
    started = time.perf_counter()
    for start in range(0, len(docs), BATCH):
        index.upsert(lexical_docs(docs[start : start + BATCH]))
        index.commit(f"{start}-0")
    seconds = time.perf_counter() - started
    index.close()
    return {"docs": len(docs), "seconds": round(seconds, 1), "docs_per_s": round(len(docs) / seconds),
            "disk_mb": round(folder_bytes(folder) / 2**20, 1), "batch": BATCH}


def memory_at(count: int, data: Path, folder: Path, questions: list[str]) -> dict[str, Any]:
    """The lexical index of `count` documents (LAReQA sentences with a copy number, in their languages) built in
    this process: resident memory before, after the build and after 200 searches; ingest rate; size on disk."""
    pool = lareqa_sentences(data / "mlqa-r") + lareqa_sentences(data / "xquad-r")
    before = rss_mb(os.getpid())["rss_mb"]
    index = LexicalIndex(folder)
    started = time.perf_counter()
    for start in range(0, count, BATCH):
        rows = range(start, min(count, start + BATCH))
        docs = [LexicalDoc(f"d{i}", f"{pool[i % len(pool)][1]} ({i // len(pool)})", pool[i % len(pool)][0])
                for i in rows]
        index.upsert(docs)
        index.commit(f"{start}-0")
    seconds = time.perf_counter() - started
    built = rss_mb(os.getpid())["rss_mb"]
    for question in questions[:200]:
        index.search(question, 10)
    searched = rss_mb(os.getpid())
    index.close()
    return {"docs": count, "seconds": round(seconds, 1), "docs_per_s": round(count / seconds),
            "rss_before_mb": before, "rss_built_mb": built, "rss_searched_mb": searched["rss_mb"],
            "peak_mb": searched["peak_mb"], "disk_mb": round(folder_bytes(folder) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=3_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/results/lexical_serving.json"))
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="the encoder's (fp32 on a CPU without native bf16, where bf16 is emulated and slow)")
    parser.add_argument("--memory-docs", type=int, help="only build a lexical index of this many documents in-process"
                        " and report its memory, ingest rate and size")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    questions = lareqa_questions(data / "xquad-r" / "en.json")
    if args.memory_docs:
        with tempfile.TemporaryDirectory(prefix="xling-bench-") as tmp:
            found = memory_at(args.memory_docs, data, Path(tmp), questions)
        found.update(command=f"python -m bench.lexical_serving --memory-docs {args.memory_docs}",
                     date=time.strftime("%Y-%m-%d"), machine=f"{platform.machine()}, {os.cpu_count()} cores")
        write_json_atomic(args.out, found)
        print(json.dumps(found, indent=2))
        return
    results: dict[str, Any] = {
        "command": f"python -m bench.lexical_serving --docs {args.docs} --clients {args.clients} "
                   f"--seconds {args.seconds:g} --precision {args.precision}",
        "model": default_model().version, "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "config": f"flat index, {args.precision} encoder",
    }
    with tempfile.TemporaryDirectory(prefix="xling-bench-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis") as embedded:
            _, _, snapshot = seed_corpus(work, embedded.url, data, args.docs, args.distinct, seed=0,
                                         precision=args.precision)
            index_file = snapshot / json.loads((snapshot / "snapshot.json").read_text())["index_file"]
            naive_index = work / "naive.faiss"
            shutil.copy(index_file, naive_index)  # the service may write a new snapshot over its own
            results["ingest"] = ingest(embedded.url, work / "ingest")
            print("ingest", results["ingest"], flush=True)
            shutil.rmtree(work / "ingest")
            port = free_port()
            env = {"XLING_REDIS_URL": embedded.url, "XLING_DATA_DIR": str(work / "data"), "XLING_LOG_LEVEL": "INFO",
                   "XLING_INDEX": "flat", "XLING_ENCODER_PRECISION": args.precision, "XLING_START_WORKER": "false"}
            os.environ.pop("XLING_RETRIEVAL_MODEL", None)
            url = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            with server_process(xling_serve_args(port), env, url, work / "xling.log"):
                results["start_up_s"] = round(time.perf_counter() - started, 1)
                results["lexical_disk_mb"] = round(folder_bytes(work / "data" / "indexes" / "lexical") / 2**20, 1)
                results["modes"] = {}
                for mode in MODES:
                    def request(i: int, mode: str = mode) -> tuple[str, str, Any]:
                        return "POST", "/search", {"query": questions[i % len(questions)], "k": 10, "mode": mode}

                    closed_loop(url, request, args.clients, min(5.0, args.seconds))  # warm-up
                    results["modes"][mode] = closed_loop(url, request, args.clients, args.seconds).summary()
                    print(mode, results["modes"][mode], flush=True)
            ready = [line for line in (work / "xling.log").read_text().splitlines() if '"msg": "ready"' in line]
            results["server_ready"] = json.loads(ready[-1]) if ready else None  # lexical documents, seconds
            port = free_port()
            naive = [sys.executable, str(Path(__file__).with_name("baseline_server.py")), "--index", str(naive_index),
                     "--model", str(default_model().path), "--port", str(port), "--prompt-name", "query"]
            with server_process(naive, {}, f"http://127.0.0.1:{port}", work / "baseline.log"):
                results["naive"] = measure(f"http://127.0.0.1:{port}", questions, args.clients, args.seconds)
            print("naive", results["naive"], flush=True)
    dense = results["modes"]["dense"]
    for row in results["modes"].values():
        row["qps_vs_dense"] = round(row["qps"] / dense["qps"], 2)
        row["p99_vs_dense"] = round(row["p99_ms"] / dense["p99_ms"], 2)
        row["qps_vs_naive"] = round(row["qps"] / results["naive"]["qps"], 2)
    write_json_atomic(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""A million documents: start-up from a snapshot, memory, search throughput exact and approximate,
recall, filtered search latency and replacing upserts, for each index kind, in one run.

Documents as in bench/search.py (real LAReQA sentences, vectors = the real encoder's vector of the
sentence plus noise). Their languages are synthetic shares so that a language filter matches 1%, 10%
and 50% of the corpus: document i is `xa` when i % 100 == 0, `xb` for 1..10, `xc` for 11..60, `xd`
otherwise. The servers run `xling serve` against the bench's Redis (no worker) with the bf16 encoder.

    python -m bench.million --docs 1000000 --out bench/results/million.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    bench_data_dir,
    closed_loop,
    default_model,
    lareqa_questions,
    lareqa_sentences,
    server_process,
    xling_serve_args,
)
from bench.search import HNSW, build_hnsw, recall_at_10, seed_corpus, tune_ef_search
from xling.models.encoder import Encoder
from xling.state.embedded_redis import EmbeddedRedis, free_port

FILTER_SHARES = {"xa": 0.01, "xb": 0.10, "xc": 0.50}


def share_lang(i: int) -> str:
    r = i % 100
    return "xa" if r == 0 else "xb" if r <= 10 else "xc" if r <= 60 else "xd"


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmHWM), from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        name: round(int(fields[key].split()[0]) / 1024, 1) for name, key in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))
    }


def server_settings(kind: str, results: dict[str, Any]) -> dict[str, str]:
    settings = {"XLING_INDEX": kind, "XLING_ENCODER_PRECISION": "bf16"}
    if kind == "hnsw":
        settings["XLING_HNSW_EF_SEARCH"] = str(results["ef_search"])
    return settings


def serve_and_measure(
    work: Path,
    redis_url: str,
    settings: dict[str, str],
    questions: list[str],
    texts: list[str],
    args: argparse.Namespace,
    load: bool = True,
) -> dict[str, Any]:
    """Start a server, time it to /readyz, read its memory; with `load`, measure searches and upserts."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"XLING_REDIS_URL": redis_url, "XLING_DATA_DIR": str(work / "data"), "XLING_LOG_LEVEL": "WARNING", **settings}
    row: dict[str, Any] = {}
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log_file = work / f"xling-{settings['XLING_INDEX']}.log"
    with server_process(
        xling_serve_args(port), env, url, log_file, ready_timeout_s=1800, stop_timeout_s=120
    ) as process:
        row["readyz_s"] = round(time.perf_counter() - started, 1)
        row["memory_ready"] = rss_mb(process.pid)
        print("ready", row, flush=True)
        if not load:
            return row

        def search(i: int) -> tuple[str, str, Any]:
            return "POST", "/search", {"query": questions[i % len(questions)], "k": 10}

        closed_loop(url, search, args.clients, 5)
        row["search"] = closed_loop(url, search, args.clients, args.seconds).summary()
        print("search", row["search"], flush=True)
        row["filtered"] = {}
        for lang, share in FILTER_SHARES.items():

            def filtered(i: int, lang: str = lang) -> tuple[str, str, Any]:
                return "POST", "/search", {"query": questions[i % len(questions)], "k": 10, "langs": [lang]}

            result = closed_loop(url, filtered, args.clients, args.seconds / 2).summary()
            row["filtered"][f"{share:.0%}"] = result
            print("filtered", share, result, flush=True)

        rng = np.random.default_rng(1)

        def replace(i: int) -> tuple[str, str, Any]:
            ids = rng.choice(args.docs, size=args.upsert_batch, replace=False)
            docs = [{"id": f"d{d}", "text": texts[(d + i) % len(texts)], "lang": share_lang(int(d))} for d in ids]
            return "POST", "/index", {"documents": docs}

        writes = closed_loop(url, replace, 4, args.seconds).summary()
        writes["docs_per_s"] = round(writes["qps"] * args.upsert_batch, 1)
        row["replacing_upserts"] = writes
        print("upserts", writes, flush=True)
        row["memory_after"] = rss_mb(process.pid)
        row["vectors"] = httpx.get(f"{url}/index/stats", timeout=30).json().get("vectors")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with mlqa-r/ and xquad-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--docs", type=int, default=1_000_000)
    # 30,000 distinct sentences: 33 noisy copies of each, the density of bench/search.py's 100k corpus.
    # (With 3,000, each sentence has 333 near-identical copies and the true top 10 is a pick among
    # near-ties that no graph search finds: recall@10 .56 at efSearch 64, .89 at 512.)
    parser.add_argument("--distinct", type=int, default=30_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--upsert-batch", type=int, default=64)
    parser.add_argument("--kinds", default="flat,hnsw")
    parser.add_argument("--ef-search", default="64,128,256,512", help="hnsw efSearch values to measure recall at")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (also after each part)")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    questions = lareqa_questions(data / "xquad-r" / "en.json")
    texts = [text for _, text in lareqa_sentences(data / "mlqa-r")]
    source = default_model()
    os.environ.pop("XLING_RETRIEVAL_MODEL", None)  # the servers serve the default model
    results: dict[str, Any] = {"model": source.version, "encoder_precision": "bf16"}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    with tempfile.TemporaryDirectory(prefix="xling-million-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis", appendfsync="everysec") as embedded:
            started = time.perf_counter()
            flat, vectors, snapshot = seed_corpus(
                work, embedded.url, data, args.docs, args.distinct, 0, share_lang, precision="auto"
            )
            results["seed_s"] = round(time.perf_counter() - started, 1)
            ids_bytes = sum(len(f"d{i}".encode()) for i in range(args.docs))
            lang_bytes = sum(len(share_lang(i)) for i in range(args.docs))
            results["raw_mb"] = {
                "vectors": round(vectors.nbytes / 2**20, 1),
                "ids_and_languages": round((ids_bytes + lang_bytes) / 2**20, 1),
                "total": round((vectors.nbytes + ids_bytes + lang_bytes) / 2**20, 1),
            }
            probe = Encoder(source.path, version=source.version, device="cpu", precision="fp32")
            query_vectors = probe.encode(questions[:300], "query")
            del probe
            save()
            kinds = args.kinds.split(",")
            if "hnsw" in kinds:
                approximate, build_s = build_hnsw(flat, vectors, HNSW)
                results["hnsw_build_s"] = round(build_s, 1)
                by_ef, served = tune_ef_search(flat, approximate, query_vectors, args.ef_search)
                results["recall_at_10_by_ef_search"] = by_ef
                results["ef_search"], results["recall_at_10"] = served, by_ef[served]
                results["filtered_recall_at_10"] = {
                    f"{share:.0%}": round(recall_at_10(flat, approximate, query_vectors[:100], [lang]), 4)
                    for lang, share in FILTER_SHARES.items()
                }
                print(
                    "hnsw",
                    results["hnsw_build_s"],
                    results["recall_at_10"],
                    results["filtered_recall_at_10"],
                    flush=True,
                )
                save()
            del vectors
            empty = {"XLING_INDEX": "flat", "XLING_ENCODER_PRECISION": "bf16", "XLING_KEY_PREFIX": "empty"}
            results["empty_server_memory"] = serve_and_measure(
                work / "empty", embedded.url, empty, questions, texts, args, load=False
            )
            save()
            # Start-up first, for every kind, before any write lands in the doc log (a later start-up
            # would replay the previous kind's upserts and time the encoder, not the snapshot load).
            for kind in kinds:
                (approximate if kind == "hnsw" else flat).save(snapshot, "0-0")
                settings = server_settings(kind, results)
                results[kind] = serve_and_measure(work, embedded.url, settings, questions, texts, args, load=False)
                used = results[kind]["memory_ready"]["rss_mb"]
                results[kind]["rss_vs_raw"] = round(used / results["raw_mb"]["total"], 2)
                index_mb = used - results["empty_server_memory"]["memory_ready"]["rss_mb"]
                results[kind]["index_rss_vs_raw"] = round(index_mb / results["raw_mb"]["total"], 2)
                save()
            for kind in kinds:
                (approximate if kind == "hnsw" else flat).save(snapshot, "0-0")
                settings = server_settings(kind, results)
                loaded = serve_and_measure(work, embedded.url, settings, questions, texts, args)
                results[kind].update({k: v for k, v in loaded.items() if k not in ("readyz_s", "memory_ready")})
                save()
    results["setup"] = {
        "docs": args.docs,
        "clients": args.clients,
        "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.million --docs {args.docs}",
    }
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

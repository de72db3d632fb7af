"""Per-language adapters as served (issue 28): rare-language queries over English documents, base against adapters.

    python -m bench.adapters_serving --model bench/results/adapters/models/<version>

For the base (the default e5) and for --model (the same base plus adapters), one after the other:
- starts `xling serve` on a fresh data folder and indexes the English side of every tatoeba-dev `test/` half (one
  document per line, `lang: en`), then waits for the centring means;
- asks each rare sentence of every test half as a query, with `query_lang` and without it (detection), in dense and
  in hybrid mode; a query is right when its first hit's text is its own English translation (accuracy@1);
- on a server of its own (`--parts throughput`, to be run on a quiet machine), measures the QPS of a mixed-language
  query load: the rare test sentences and XQuAD-R questions in all 11 languages, shuffled, no `query_lang` (every
  query detected), in the default (hybrid) and in dense mode.
And, from the version's files alone, language detection: each test half's rare sentences among the tuned languages
plus XQuAD-R's 11, and among every language the detector knows; and how many XQuAD-R questions it would route to an
adapter. Each part is written to --out when it finishes; a re-run skips the parts already there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_data_dir, closed_loop, lareqa_questions, server_process, xling_serve_args
from xling.models.adapters.bundle import adapter_folder, adapter_records
from xling.models.data.bitext import BitextPair, load_bitext
from xling.models.files import write_json_atomic
from xling.models.language import LanguageDetector, LanguageProfile

XQUAD_LANGS = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
MODES = ("dense", "hybrid")


def rare_side(pair: BitextPair) -> tuple[str, list[str], list[str]]:
    """(rare language, its sentences, their English translations) of a tatoeba pair `<rare>-eng`."""
    return (pair.src, pair.src_lines, pair.tgt_lines) if pair.tgt == "eng" else (pair.tgt, pair.tgt_lines,
                                                                                 pair.src_lines)


def detection(folder: Path, pairs: list[BitextPair], questions: dict[str, list[str]]) -> dict[str, Any]:
    langs = sorted(adapter_records(folder))
    profiles = {lang: LanguageProfile.load(adapter_folder(folder, lang)) for lang in langs}
    missing = [lang for lang, profile in profiles.items() if profile is None]
    if missing:
        raise SystemExit(f"{folder}: adapters {missing} carry no language profile")
    detector = LanguageDetector({lang: p for lang, p in profiles.items() if p is not None})
    among = set(langs) | set(XQUAD_LANGS)
    found: dict[str, Any] = {"among_tuned_and_xquad": {}, "among_all": {}}
    for pair in pairs:
        lang, sentences, _ = rare_side(pair)
        found["among_tuned_and_xquad"][lang] = round(
            sum(detector.detect(s, among) == lang for s in sentences) / len(sentences), 4)
        found["among_all"][lang] = round(sum(detector.detect(s) == lang for s in sentences) / len(sentences), 4)
    for key in ("among_tuned_and_xquad", "among_all"):
        found[f"{key}_macro"] = round(sum(found[key].values()) / len(found[key]), 4)
    routed = {lang: sum(detector.detect(q) in profiles for q in qs) / len(qs) for lang, qs in questions.items()}
    found["xquad_questions_routed_to_an_adapter"] = {lang: round(share, 4) for lang, share in routed.items()}
    return found


async def _ask_all(url: str, bodies: list[dict[str, Any]], clients: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in bodies]
    queue = list(enumerate(bodies))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i, body = queue.pop()
            response = await client.post("/search", json=body)
            response.raise_for_status()
            results[i] = response.json()

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results


def accuracy(url: str, pairs: list[BitextPair], clients: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for mode in MODES:
        for routing in ("query_lang", "detected"):
            per_lang = {}
            for pair in pairs:
                lang, sentences, english = rare_side(pair)
                given = {"query_lang": lang} if routing == "query_lang" else {}
                bodies = [{"query": s, "k": 1, "mode": mode, **given} for s in sentences]
                answers = _run(_ask_all(url, bodies, clients))
                right = sum(bool(a["hits"]) and a["hits"][0]["text"] == e
                            for a, e in zip(answers, english, strict=True))
                per_lang[lang] = round(right / len(sentences), 4)
            found[f"{mode}:{routing}"] = {**per_lang, "macro": round(sum(per_lang.values()) / len(per_lang), 4)}
            print(mode, routing, found[f"{mode}:{routing}"], flush=True)
    return found


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def throughput(url: str, queries: list[str], clients: int, seconds: float) -> dict[str, Any]:
    found = {}
    for mode in ("hybrid", "dense"):
        result = closed_loop(url, lambda n, m=mode: ("POST", "/search", {"query": queries[n % len(queries)], "k": 10,
                                                                          "mode": m}), clients, seconds)
        found[mode] = result.summary()
        print(mode, found[mode], flush=True)
    return found


def serve_and_measure(name: str, model: str | None, part: str, args: argparse.Namespace, pairs: list[BitextPair],
                      mixed: list[str]) -> dict[str, Any]:
    """One part (accuracy | throughput) on one server; each part on a server of its own, so that the throughput
    can be measured later, on a machine with nothing else running."""
    out_file = args.out / f"{part}_{name}.json"
    if out_file.is_file():
        return dict(json.loads(out_file.read_text()))
    data_dir = args.out / f"data_{name}_{part}"
    env = {"XLING_DATA_DIR": str(data_dir), "XLING_LOG_JSON": "false"}
    if model:
        env["XLING_RETRIEVAL_MODEL"] = model
    url = f"http://127.0.0.1:{args.port}"
    with server_process(xling_serve_args(args.port), env, url, args.out / f"serve_{name}_{part}.log"):
        client = httpx.Client(base_url=url, timeout=600)
        docs = [{"id": f"{rare_side(p)[0]}-{i}", "text": text, "lang": "en"}
                for p in pairs for i, text in enumerate(rare_side(p)[2])]
        for start in range(0, len(docs), 256):
            client.post("/index", json={"documents": docs[start:start + 256]}).raise_for_status()
        deadline = time.monotonic() + 900
        while not client.get("/healthz").json().get("centering", "").startswith("calibrated"):
            if time.monotonic() > deadline:
                raise RuntimeError("the means were never calibrated")
            time.sleep(2)
        found: dict[str, Any] = {"model_version": client.get("/models/active").json()["version"],
                                 "documents": len(docs)}
        if part == "accuracy":
            found["accuracy"] = accuracy(url, pairs, args.clients)
        else:
            found["throughput"] = throughput(url, mixed, args.clients * 2, args.seconds)
    write_json_atomic(out_file, found)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the version folder with adapters (bench.adapters)")
    parser.add_argument("--data")
    parser.add_argument("--out", type=Path, default=Path("bench/results/adapters_serving"))
    parser.add_argument("--port", type=int, default=8131)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--parts", default="accuracy,throughput",
                        help="accuracy, throughput, both (in order), or '' for detection alone")
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = load_bitext(data / "tatoeba-dev" / "test")
    questions = {lang: lareqa_questions(data / "xquad-r" / f"{lang}.json") for lang in XQUAD_LANGS}
    if not (args.out / "detection.json").is_file():
        write_json_atomic(args.out / "detection.json", detection(Path(args.model), pairs, questions))
    print("detection", json.loads((args.out / "detection.json").read_text()), flush=True)
    mixed = [s for p in pairs for s in rare_side(p)[1]] + [q for qs in questions.values() for q in qs[:200]]
    random.Random(0).shuffle(mixed)
    models = (("base", None), ("adapters", str(Path(args.model).resolve())))
    for part in filter(None, args.parts.split(",")):
        if part not in ("accuracy", "throughput"):
            raise SystemExit(f"unknown part {part!r}")
        served = {name: serve_and_measure(name, model, part, args, pairs, mixed) for name, model in models}
        if part == "throughput":
            ratio = {mode: round(served["adapters"]["throughput"][mode]["qps"]
                                 / served["base"]["throughput"][mode]["qps"], 3) for mode in ("hybrid", "dense")}
            write_json_atomic(args.out / "qps_ratio.json", ratio)
            print("QPS ratio (adapters / base):", ratio)


if __name__ == "__main__":
    main()

"""The rare-language recipe, as a user with a few hundred pairs per language would run it: through the API.

Starts `xling serve` (embedded Redis and worker, the default e5) on a fresh data folder, uploads MLQA-R, XQuAD-R
and each tatoeba-dev language's `train/` and `test/` halves as datasets, then:
- scores the base on every test half and on XQuAD-R, raw and centred (`POST /jobs/evaluate`);
- per language in --langs: `POST /jobs/finetune` on MLQA-R plus that language's train half, with the recipe's
  settings (--recipe-json overrides them), `deploy: never`; then scores the tuned version on every test half
  (the languages it was not tuned on included) and on XQuAD-R, raw and centred;
- with --joint, one such job instead, on MLQA-R plus the train halves of every language in --langs (the bitext
  share split evenly between them): one model for all of a user's languages.
Each finished part is written to --out at once; a re-run skips the parts already there. The job's own
timestamps give the CPU time each step took (the worker has the cores to itself only if nothing else runs).

    python -m bench.tatoeba_recipe --langs kzj,cor --out bench/results/tatoeba_recipe
    python -m bench.tatoeba_recipe --joint --out bench/results/tatoeba_recipe
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import bench_data_dir, server_process, xling_serve_args
from xling.models.files import write_json_atomic

LANGS = ["arq", "cor", "dsb", "dtp", "kzj", "pam", "tat", "war"]
# The recipe under test; every key is a finetune request field. MLQA-R gives the monolingual batches (an anchor for
# what the base does well) and the validation split's QA groups (the interpolation's guard); the cross-lingual
# batches are all bitext; the step budget is a number of passes over each language's pairs.
RECIPE: dict[str, Any] = {
    "strategy": "hybrid", "alpha": 0.25, "batch_size": 32, "bitext_passes": 4, "learning_rate": 1e-4,
    "freeze_embeddings": True, "val_fraction": 0.1, "eval_steps": 100, "early_stopping_patience": 2,
    "interpolate": True, "mixing": {"mlqa": 0.0, "bitext": 1.0},
}


def zipped(folder: Path, pattern: str = "*") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.glob(pattern)):
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


def upload(client: httpx.Client, name: str, payload: bytes) -> None:
    if name in {d["name"] for d in client.get("/datasets").json()["data"]}:
        return
    response = client.post("/datasets", data={"name": name}, files={"file": (f"{name}.zip", payload)}, timeout=600)
    response.raise_for_status()


def run_job(client: httpx.Client, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/jobs/{kind}", json=body)
    if response.status_code != 202:
        raise RuntimeError(f"{kind}: {response.status_code} {response.text}")
    job_id = response.json()["job_id"]
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"{kind} job {job_id} {job['status']}: {job['error']}")
            job["seconds"] = round(job["finished_at"] - job["started_at"], 1)
            return dict(job)
        time.sleep(5)


def scores(job: dict[str, Any], langs: list[str]) -> dict[str, Any]:
    """Accuracy@1 per test half and XQuAD-R's four headline numbers, raw and centred."""
    metrics = job["metrics"]
    found: dict[str, Any] = {}
    for kind, infix in (("raw", ""), ("centred", "centred:")):
        found[kind] = {lang: round(metrics[f"tat-{lang}-test:{infix}bitext_acc@1"], 4) for lang in langs}
        found[kind]["macro"] = round(sum(found[kind][lang] for lang in langs) / len(langs), 4)
        found[kind]["xquad"] = {k: round(metrics[f"xquad:{infix}{k}"], 4)
                                for k in ("mono_map", "cross_map", "multi_map", "rank_distance")}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--langs", default=",".join(LANGS), help="languages to tune, one job each")
    parser.add_argument("--joint", action="store_true", help="one job on every language in --langs")
    parser.add_argument("--recipe-json", default="{}", help="finetune fields overriding the recipe's")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xling-tatoeba"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/tatoeba_recipe"))
    args = parser.parse_args()
    data = bench_data_dir(args.data)
    recipe = {**RECIPE, **json.loads(args.recipe_json)}
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    joint = " --joint" if args.joint else ""
    results.update(command=f"python -m bench.tatoeba_recipe{joint} --langs {args.langs} --recipe-json "
                           f"'{args.recipe_json}'", recipe=recipe)
    url = f"http://127.0.0.1:{args.port}"
    env = {"XLING_DATA_DIR": str(args.work / "data"), "XLING_LOG_JSON": "false"}
    args.work.mkdir(parents=True, exist_ok=True)
    staging = args.work / "staging"
    with server_process(xling_serve_args(args.port), env, url, args.work / "serve.log"), \
            httpx.Client(base_url=url, timeout=60) as client:
        upload(client, "mlqa", zipped(data / "mlqa-r", "*.json"))
        upload(client, "xquad", zipped(data / "xquad-r", "*.json"))
        for lang in LANGS:
            for half in ("train", "test"):
                folder = staging / f"{lang}-{half}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                for path in (data / "tatoeba-dev" / half).glob(f"tatoeba.{lang}-eng.*"):
                    # English as MLQA-R codes it ("en", Tatoeba says "eng"): the same language to the trainer, so
                    # an anchor (anchor_distillation) keeps the English side where the base put it.
                    side = "en" if path.suffix == ".eng" else lang
                    shutil.copy(path, folder / f"tatoeba.{lang}-en.{side}")
                upload(client, f"tat-{lang}-{half}", zipped(folder))
        tests = [f"tat-{lang}-test" for lang in LANGS]
        if "base" not in results:
            job = run_job(client, "evaluate", {"model": "active", "datasets": [*tests, "xquad"], "centering": True})
            results["base"] = {"scores": scores(job, LANGS), "seconds": job["seconds"]}
            write_json_atomic(results_path, results)
        runs = [args.langs.split(",")] if args.joint else [[lang] for lang in args.langs.split(",")]
        for tuned_langs in runs:
            key = "tuned-" + ("joint-" + "-".join(tuned_langs) if args.joint else tuned_langs[0])
            if key in results:
                continue
            bitexts = [f"tat-{lang}-train" for lang in tuned_langs]
            shares = {"mlqa": recipe["mixing"]["mlqa"]} | {
                name: recipe["mixing"]["bitext"] / len(bitexts) for name in bitexts}
            body = {**recipe, "dataset": ["mlqa", *bitexts], "mixing": shares,
                    "version": f"recipe-{'joint' if args.joint else tuned_langs[0]}-{int(time.time())}"}
            trained = run_job(client, "finetune", body)
            job = run_job(client, "evaluate", {"model": trained["model_version"],
                                                "datasets": [*tests, "xquad"], "centering": True})
            manifest = next(m for m in client.get("/models").json()["data"]
                            if m["version"] == trained["model_version"])
            results[key] = {
                "tuned_on": tuned_langs, "scores": scores(job, LANGS), "train_seconds": trained["seconds"],
                "eval_seconds": job["seconds"], "train_metrics": trained["metrics"],
                "interpolation": manifest["training"].get("interpolation"),
                "mixing": manifest["training"].get("mixing"),
            }
            write_json_atomic(results_path, results)
            print(key, json.dumps(results[key]["scores"]["centred"]), flush=True)


if __name__ == "__main__":
    main()

"""infinity-emb's CPU backends on a model folder: query embeddings/s one at a time and in batches.

Run by bench/encoders.py with the Python of a venv that has `infinity-emb[torch,optimum]` (its pins
clash with xling's), so this file imports nothing from xling. Prints one JSON line per backend and a
last line with all of them.

    PY bench/peer_infinity.py MODEL_FOLDER QUESTIONS.json SINGLES BATCH
"""

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from infinity_emb import AsyncEmbeddingEngine, EngineArgs


async def measure(folder: str, engine: str, dtype: str, questions: list, singles: int, batch: int) -> dict:
    args = EngineArgs(model_name_or_path=folder, engine=engine, device="cpu", dtype=dtype, batch_size=batch)
    model = AsyncEmbeddingEngine.from_args(args)
    queries = ["query: " + q for q in questions]  # what xling adds for multilingual-e5 queries
    async with model:
        await model.embed(sentences=queries[:batch])
        started = time.perf_counter()
        for query in queries[:singles]:
            await model.embed(sentences=[query])
        single = singles / (time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, len(queries), batch):
            await model.embed(sentences=queries[start : start + batch])
        batched = len(queries) / (time.perf_counter() - started)
    return {"single_per_s": round(single, 1), f"batch{batch}_per_s": round(batched, 1)}


def with_onnx(folder: str, work: Path) -> str:
    """A copy of the folder with an ONNX export beside it, which infinity's optimum backend needs."""
    import functools

    import torch
    from optimum.exporters.onnx import main_export

    # optimum 1.24 predates torch's dynamo exporter becoming the default; ask for the TorchScript one it expects.
    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)

    copy = work / "model"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    main_export(str(copy), output=copy, task="feature-extraction")
    return str(copy)


def main() -> None:
    folder, questions_file, singles, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with open(questions_file, encoding="utf-8") as fh:
        questions = json.load(fh)
    results = {}
    work = Path(tempfile.mkdtemp(prefix="peer-infinity-"))
    onnx_folder = None
    for engine, dtype in (("torch", "float32"), ("optimum", "float32"), ("optimum", "int8")):
        label = f"{engine}-{dtype}"
        try:
            if engine == "optimum" and onnx_folder is None:
                onnx_folder = with_onnx(folder, work)
            model_folder = onnx_folder if engine == "optimum" else folder
            results[label] = asyncio.run(measure(model_folder, engine, dtype, questions, singles, batch))
        except Exception as exc:  # a backend that cannot run this model is reported, not fatal
            results[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps({label: results[label]}), file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()

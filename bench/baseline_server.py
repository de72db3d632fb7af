"""The naive baseline for bench/search.py: one encode and one FAISS search per request, no batching.

python -m bench.baseline_server --index PATH.faiss --port 8001
"""

from __future__ import annotations

import argparse

import faiss
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class Query(BaseModel):
    query: str
    k: int = 10


def make_app(index_path: str, model_path: str, prompt_name: str | None = None) -> FastAPI:
    model = SentenceTransformer(model_path, device="cpu")
    index = faiss.read_index(index_path)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/search")
    def search(body: Query) -> dict[str, list[float] | list[int]]:
        # A plain `def` route: FastAPI runs it on its thread pool, as most hand-written services do.
        vector = model.encode([body.query], normalize_embeddings=True, prompt_name=prompt_name)
        scores, ids = index.search(vector, body.k)
        return {"ids": ids[0].tolist(), "scores": scores[0].tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--index", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--prompt-name", help="the model's query prompt (e5: query), as xling applies it")
    args = parser.parse_args()
    app = make_app(args.index, args.model, args.prompt_name)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import RunningService, running_service
from tests.synthetic import LANGS, corpus
from tests.tiny_model import random_sentences
from xling.models.encoder import Encoder


def test_index_then_search_finds_the_document(service: RunningService) -> None:
    docs = corpus()
    response = service.index(docs)
    assert response.status_code == 200 and response.json()["indexed"] == len(docs)
    # read-your-writes: searchable as soon as the write returns
    for doc in docs[::7]:
        hits = service.client.post("/search", json={"query": doc["text"], "k": 3}).json()["hits"]
        assert hits[0]["id"] == doc["id"]
        assert hits[0]["text"] == doc["text"] and hits[0]["lang"] == doc["lang"]
        assert hits[0]["metadata"] == doc["metadata"] and hits[0]["rank"] == 1
    body = service.client.get("/search", params={"q": docs[3]["text"], "k": 2}).json()
    assert body["hits"][0]["id"] == docs[3]["id"] and body["model_version"] == "tiny-mean"
    assert body["took_ms"] >= 0


def test_upsert_replaces_text_and_vector(service: RunningService) -> None:
    service.index([{"id": "doc", "text": "the cat sleeps on the warm windowsill", "lang": "en"}])
    service.index([{"id": "other", "text": "stock markets fell sharply on monday", "lang": "en"}])
    service.index([{"id": "doc", "text": "die aktienmärkte fielen am montag stark", "lang": "de"}])
    hits = service.client.post("/search", json={"query": "die aktienmärkte fielen am montag stark"}).json()["hits"]
    assert hits[0]["id"] == "doc" and hits[0]["lang"] == "de" and hits[0]["score"] > 0.999
    assert service.client.get("/index/stats").json()["vectors"] == 2
    assert service.client.get("/index/doc").json()["text"] == "die aktienmärkte fielen am montag stark"


def test_delete_removes_the_document(service: RunningService) -> None:
    docs = corpus(5)
    service.index(docs)
    deleted = service.client.delete(f"/index/{docs[0]['id']}").json()
    assert (deleted["deleted"], deleted["missing"], deleted["applied"]) == (1, [], True)
    assert docs[0]["id"] not in service.search_ids(docs[0]["text"], k=20)
    assert service.client.delete(f"/index/{docs[0]['id']}").status_code == 404
    response = service.client.post("/index/delete", json={"ids": [docs[1]["id"], "never-there"]})
    assert response.json()["deleted"] == 1 and response.json()["missing"] == ["never-there"]
    assert response.json()["applied"] is True and response.json()["log_offset"]
    assert service.client.get("/index/stats").json()["vectors"] == len(docs) - 2
    assert service.client.get(f"/index/{docs[1]['id']}").status_code == 404


def test_language_filter_equals_brute_force_top_k(service: RunningService, tiny_model: Path) -> None:
    docs = corpus(30)
    service.index(docs)
    encoder = Encoder(tiny_model, version="ref", device="cpu")
    doc_vectors = encoder.encode([d["text"] for d in docs], "passage")
    rng = np.random.default_rng(3)
    for trial in range(12):
        langs = [str(x) for x in rng.choice(LANGS, size=int(rng.integers(1, 4)), replace=False)]
        where = {"parity": 1} if trial % 3 == 0 else None
        query = random_sentences(str(rng.choice(LANGS)), 1, seed=100 + trial)[0]
        scores = doc_vectors @ encoder.encode([query], "query")[0]
        keep = [d["lang"] in langs and (where is None or d["metadata"]["parity"] == 1) for d in docs]
        expected = [i for i in np.argsort(-scores, kind="stable") if keep[i]][:10]
        params: dict[str, Any] = {"k": 10, "langs": langs}
        if where:
            params["filter"] = where
        response = service.client.post("/search", json={"query": query, **params})
        hits = response.json()["hits"]
        by_id = {d["id"]: i for i, d in enumerate(docs)}
        # every hit passes the filter, and rank by rank its score is the brute-force one; the tiny
        # model's cosines lie close together, so the order of near-ties (1e-5) is not compared
        assert all(keep[by_id[hit["id"]]] for hit in hits), (langs, where)
        assert len({hit["id"] for hit in hits}) == len(hits) == len(expected)
        assert [scores[by_id[hit["id"]]] for hit in hits] == pytest.approx([scores[i] for i in expected], abs=1e-5)
        assert [hit["score"] for hit in hits] == pytest.approx([scores[i] for i in expected], abs=1e-5)
    # GET with comma-separated languages
    body = service.client.get("/search", params={"q": "the cat", "lang": "de,fr", "k": 50}).json()
    assert body["hits"] and {h["lang"] for h in body["hits"]} <= {"de", "fr"}


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(make_settings: Any) -> None:
    with running_service(make_settings(batch_max_wait_ms=30)) as service:
        docs = corpus(16)
        service.index(docs)

        async def ask_all() -> list[list[str]]:
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:

                async def ask(text: str) -> list[str]:
                    response = await client.post("/search", json={"query": text, "k": 1})
                    return [h["id"] for h in response.json()["hits"]]

                return await asyncio.gather(*(ask(d["text"]) for d in docs))

        answers = asyncio.run(ask_all())
        assert answers == [[d["id"]] for d in docs]
        metrics = service.client.get("/metrics").text
        total = float(re.search(r"^xling_search_batch_size_count (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
        singles = float(re.search(r'^xling_search_batch_size_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1))  # type: ignore[union-attr]
        assert total < len(docs), "queries were not batched"
        assert singles < total, "no batch held more than one query"


def test_write_key_guards_writes_but_not_search(make_settings: Any) -> None:
    with running_service(make_settings(api_key="s3cret")) as service:
        doc = {"id": "a", "text": "the cat sleeps", "lang": "en"}
        assert service.index([doc]).status_code == 401
        assert (
            service.client.post(
                "/index", json={"documents": [doc]}, headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        ok = service.client.post("/index", json={"documents": [doc]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert service.client.delete("/index/a").status_code == 401
        assert service.search_ids("the cat sleeps") == ["a"]


def test_operations_endpoints(service: RunningService) -> None:
    assert service.client.get("/healthz").json()["model_version"] == "tiny-mean"
    assert service.client.get("/readyz").json()["status"] == "ready"
    page = service.client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/search" in page.text
    assert "/search" in service.client.get("/openapi.json").json()["paths"]
    service.index(corpus(2))
    metrics = service.client.get("/metrics").text
    assert 'xling_request_seconds_count{method="POST",route="/index",status="200"}' in metrics
    assert "xling_index_vectors 8.0" in metrics
    assert "xling_applier_lag_seconds" in metrics

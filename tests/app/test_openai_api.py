"""POST /v1/embeddings and GET /v1/models, called with the `openai` Python client against a running service."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import openai
import pytest

from tests.conftest import RunningService, running_service

TEXTS = ["the cat sleeps on the warm windowsill", "die katze schläft", "stock markets fell sharply"]


@pytest.fixture(scope="module")
def keyed(module_settings: Any) -> Any:
    settings = module_settings("openai", search_api_key="search-key", max_docs_per_request=4, max_text_chars=200)
    with running_service(settings) as service:
        yield service


def client(service: RunningService, key: str = "search-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0)


def served_version(service: RunningService) -> str:
    return str(service.client.get("/healthz").json()["model_version"])


def test_embeddings_match_the_encoder_in_both_formats(keyed: RunningService) -> None:
    version = served_version(keyed)
    encoder = keyed.app.state.engine.require_pair().encoder
    expected_query = encoder.encode(TEXTS, "query")
    expected_passage = encoder.encode(TEXTS, "passage")
    # With no encoding_format the client asks for base64 on the wire and decodes it; float is a JSON list.
    for extra in ({}, {"encoding_format": "float"}):
        reply = client(keyed).embeddings.create(input=TEXTS, model=version, **extra)  # type: ignore[arg-type]
        got = np.array([item.embedding for item in reply.data], dtype=np.float32)
        assert [item.index for item in reply.data] == [0, 1, 2]
        np.testing.assert_allclose(got, expected_query, atol=1e-5)
        assert reply.model == version
        assert reply.usage.prompt_tokens == reply.usage.total_tokens > len(TEXTS)
    raw = client(keyed).embeddings.create(input=TEXTS, model=version, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in raw.data])  # type: ignore[arg-type]
    np.testing.assert_allclose(decoded, expected_query, atol=1e-5)
    passages = client(keyed).embeddings.create(input=TEXTS, model=version, extra_body={"input_type": "passage"})
    np.testing.assert_allclose(
        np.array([item.embedding for item in passages.data], dtype=np.float32), expected_passage, atol=1e-5
    )
    if encoder.query_prefix != encoder.passage_prefix:
        assert not np.allclose(expected_query, expected_passage)
    single = client(keyed).embeddings.create(input=TEXTS[0], model=version)
    assert len(single.data) == 1 and len(single.data[0].embedding) == encoder.dim


def test_token_usage_counts_what_the_model_read(keyed: RunningService) -> None:
    encoder = keyed.app.state.engine.require_pair().encoder
    expected = sum(len(encoder.tokenizer(encoder.query_prefix + t)["input_ids"]) for t in TEXTS)
    reply = client(keyed).embeddings.create(input=TEXTS, model=served_version(keyed))
    assert reply.usage.prompt_tokens == expected


def test_models_list_and_retrieve(keyed: RunningService) -> None:
    version = served_version(keyed)
    models = client(keyed).models.list()
    assert [m.id for m in models.data] == [version]
    assert client(keyed).models.retrieve(version).id == version
    with pytest.raises(openai.NotFoundError):
        client(keyed).models.retrieve("text-embedding-3-small")


def test_keys_limits_and_bad_input_are_refused(keyed: RunningService) -> None:
    version = served_version(keyed)
    with pytest.raises(openai.AuthenticationError):
        client(keyed, key="wrong").embeddings.create(input="x", model=version)
    with pytest.raises(openai.NotFoundError) as missing:
        client(keyed).embeddings.create(input="x", model="text-embedding-3-small")
    assert "not served" in missing.value.body["detail"]  # type: ignore[index]  # xling's one error shape
    refusals = [
        ({"input": ["a"] * 5}, "limit is 4"),
        ({"input": "x" * 201}, "limit is 200"),
        ({"input": [""]}, "input[0] is empty"),
        ({"input": [[1, 2, 3]]}, "token ids"),
        ({"input": "x", "dimensions": 7}, "dimensional"),
    ]
    for body, reason in refusals:
        response = keyed.client.post(
            "/v1/embeddings", json={"model": version, **body}, headers={"Authorization": "Bearer search-key"}
        )
        assert response.status_code == 422, (body, response.text)
        assert reason in response.json()["detail"], (body, response.text)


def test_embeddings_share_batches_with_searches(make_settings: Any) -> None:
    import asyncio

    import httpx

    with running_service(make_settings(batch_max_wait_ms=50.0)) as service:
        version = served_version(service)

        async def together() -> list[int]:
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
                calls = [http.post("/search", json={"query": t}) for t in TEXTS]
                calls += [http.post("/v1/embeddings", json={"model": version, "input": TEXTS}) for _ in range(3)]
                return [r.status_code for r in await asyncio.gather(*calls)]

        assert asyncio.run(together()) == [200] * 6
        metrics = service.client.get("/metrics").text
        batches = float(
            next(line.split()[-1] for line in metrics.splitlines() if line.startswith("xling_search_batch_size_count"))
        )
        assert batches < 6, "searches and embeddings did not share a micro-batch"

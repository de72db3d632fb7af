"""A version with a language adapter served: documents and queries routed by language (given or detected), the
embeddings API says which adapter encoded what, and a restart serves the same vectors from the snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.adapted_model import INVENTED, RARE
from tests.app.helpers import assert_same_results
from tests.conftest import RunningService, running_service
from tests.tiny_model import CORPUS

ENGLISH_DOCS = [{"id": f"en-{i}", "text": text, "lang": "en"} for i, text in enumerate(CORPUS["en"])]
GERMAN_DOCS = [{"id": f"de-{i}", "text": text, "lang": "de"} for i, text in enumerate(CORPUS["de"])]
# The same rare sentences twice: once with their language, once without (detection must route them alike).
RARE_GIVEN = [{"id": f"{RARE}-{i}", "text": text, "lang": RARE} for i, text in enumerate(INVENTED[:10])]
RARE_DETECTED = [{"id": f"anon-{i}", "text": text} for i, text in enumerate(INVENTED[:10])]


def embed(service: RunningService, texts: list[str], **extra: Any) -> list[dict[str, Any]]:
    model = service.client.get("/v1/models").json()["data"][0]["id"]
    response = service.client.post("/v1/embeddings", json={"input": texts, "model": model, **extra})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def scores(service: RunningService, query: str, **extra: Any) -> dict[str, float]:
    body = {"query": query, "k": 50, **extra}
    return {h["id"]: h["score"] for h in service.client.post("/search", json=body).json()["hits"]}


def test_an_adapter_version_routes_by_language_and_survives_restart(
    make_settings: Any, adapter_version: Path, adapter_base: Any
) -> None:
    # Raw vectors, so a vector here is the encoder's own (centring is covered by the job tests).
    settings = make_settings(retrieval_model=str(adapter_version), centering=False)
    with running_service(settings) as service:
        assert service.index(ENGLISH_DOCS + GERMAN_DOCS + RARE_GIVEN + RARE_DETECTED).status_code == 200
        rows = embed(service, [INVENTED[0], CORPUS["de"][0]], lang=RARE)
        assert [row["adapter"] for row in rows] == [RARE, RARE]  # `lang` is the caller's word for every input
        detected = embed(service, [INVENTED[0], CORPUS["de"][0], CORPUS["en"][1]])
        assert [row["adapter"] for row in detected] == [RARE, None, None]
        assert np.allclose(detected[0]["embedding"], rows[0]["embedding"], atol=1e-6)
        plain = embed(service, [INVENTED[0]], lang="de")[0]
        assert plain["adapter"] is None and not np.allclose(plain["embedding"], rows[0]["embedding"], atol=1e-3)

        # A document without `lang` is detected and encoded by the adapter: the same vector as with its language.
        query = ENGLISH_DOCS[0]["text"]
        found = scores(service, query, query_lang="en")
        for i in range(10):
            assert abs(found[f"{RARE}-{i}"] - found[f"anon-{i}"]) <= 1e-6
        # The query's own route: through the adapter with query_lang, through the shared weights without.
        rare_query = INVENTED[20]
        routed, unrouted = scores(service, rare_query, query_lang=RARE), scores(service, rare_query, query_lang="de")
        assert any(abs(routed[i] - unrouted[i]) > 1e-3 for i in routed.keys() & unrouted.keys())
        assert scores(service, rare_query) == routed  # detected as the adapter's language
        before = [scores(service, q, query_lang=lang) for q, lang in ((query, "en"), (rare_query, RARE))]

    with running_service(settings) as second:
        after = [scores(second, q, query_lang=lang) for q, lang in ((query, "en"), (rare_query, RARE))]
        assert_same_results([sorted(a.items()) for a in after], [sorted(b.items()) for b in before])
        assert second.client.get("/models/active").json()["version"] == adapter_version.name

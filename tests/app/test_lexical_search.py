"""Search modes on a running service: lexical (an index in the replica, or the BM25 vectors of a Qdrant collection in
qdrant-client's local mode), hybrid fusion, filters, writes, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aredis

from tests.conftest import RunningService, running_service
from tests.synthetic import LANGS, corpus
from tests.tiny_model import random_sentences
from xling.state.docstore import DocStore, StoredDoc
from xling.state.keys import RedisKeys
from xling.state.settings import Settings

MODES = ("dense", "lexical", "hybrid")
# Where BM25 lives: an index in the replica, or sparse vectors in the Qdrant collection.
ENGINES = {"replica": {}, "qdrant": {"index": "qdrant", "lexical_engine": "qdrant"}}


def engine_settings(make_settings: Any, engine: str, tmp_path: Path, **overrides: Any) -> Settings:
    extra = {"qdrant_path": tmp_path / "qdrant"} if engine == "qdrant" else {}
    return make_settings(**ENGINES[engine], **extra, **overrides)  # type: ignore[no-any-return]


@pytest.fixture(params=list(ENGINES))
def each_engine(request: pytest.FixtureRequest, make_settings: Any, tmp_path: Path) -> Iterator[RunningService]:
    with running_service(engine_settings(make_settings, request.param, tmp_path)) as service:
        yield service


def _hits(service: RunningService, query: str, **params: Any) -> list[dict[str, Any]]:
    response = service.client.post("/search", json={"query": query, **params})
    assert response.status_code == 200, response.text
    return list(response.json()["hits"])


def test_each_mode_answers_and_says_which_rankings_found_a_hit(each_engine: RunningService) -> None:
    service = each_engine
    docs = corpus(10)
    docs.append({"id": "part", "text": "replacement part XK-4471-B for the pump", "lang": "en"})
    assert service.index(docs).status_code == 200
    lexical = _hits(service, "XK-4471-B", mode="lexical", k=3)
    assert [h["id"] for h in lexical] == ["part"] and lexical[0]["ranks"] == {"lexical": 1}
    dense = _hits(service, docs[4]["text"], mode="dense", k=3)
    assert dense[0]["id"] == docs[4]["id"] and dense[0]["ranks"] == {"dense": 1}
    hybrid = _hits(service, "XK-4471-B pump", mode="hybrid", k=5)
    assert hybrid[0]["id"] == "part" and hybrid[0]["ranks"]["lexical"] == 1 and "dense" in hybrid[0]["ranks"]
    got = service.client.get("/search", params={"q": "XK-4471-B", "mode": "lexical", "k": 2}).json()
    assert [h["id"] for h in got["hits"]] == ["part"]
    bad = service.client.post("/search", json={"query": "x", "mode": "sparse"})
    assert bad.status_code == 422 and "mode" in bad.text


@pytest.mark.parametrize(
    ("engine", "fusion"),
    [("replica", {}), ("replica", {"fusion_window": 4, "fusion_weight": 0.5}),
     ("replica", {"fusion_window": 4, "fusion_weight": 0.5, "fusion_normalise": "language"}),
     ("qdrant", {"fusion_window": 4, "fusion_weight": 0.5, "fusion_normalise": "language"})],
    ids=["default", "deep", "deep-per-language", "qdrant-deep-per-language"],
)
def test_hybrid_with_a_filter_equals_brute_force_over_the_filtered_documents(
    make_settings: Any, tmp_path: Path, engine: str, fusion: dict[str, Any]
) -> None:
    """'deep': a first fetch of 4 with a heavy lexical weight, so the search has to look deeper to be exact."""
    with running_service(engine_settings(make_settings, engine, tmp_path, **fusion)) as service:
        _check_hybrid_against_brute_force(service)


def _check_hybrid_against_brute_force(service: RunningService) -> None:
    docs = corpus(30)
    service.index(docs)
    weight, per_language = service.settings.fusion_weight, service.settings.fusion_normalise == "language"
    rng = np.random.default_rng(5)
    for trial in range(8):
        langs = [str(x) for x in rng.choice(LANGS, size=int(rng.integers(1, 3)), replace=False)]
        where = {"parity": 1} if trial % 2 == 0 else None
        passing = [d for d in docs if d["lang"] in langs and (where is None or d["metadata"]["parity"] == 1)]
        # Half a filtered document's words beside a random sentence: both rankings have something to say.
        words = passing[trial]["text"].split()
        query = random_sentences(str(rng.choice(LANGS)), 1, seed=200 + trial)[0] + " " + " ".join(words[::2])
        params: dict[str, Any] = {"k": 100, "langs": langs, **({"filter": where} if where else {})}
        # Each ranking over every filtered document, as the service computes it (tests above and
        # tests/models/test_lexical.py check each against its own reference); fused here by hand.
        cosine = {h["id"]: h["score"] for h in _hits(service, query, mode="dense", **params)}
        lexical = _hits(service, query, mode="lexical", **params)
        bm25, lang_of = {h["id"]: h["score"] for h in lexical}, {h["id"]: h["lang"] for h in lexical}
        assert bm25 and set(bm25) <= set(cosine)
        best = {lang: max(bm25[i] for i in bm25 if lang_of[i] == lang or not per_language) for lang in LANGS
                if any(lang_of[i] == lang for i in bm25) or not per_language}
        fused = {i: score + weight * (bm25[i] / best[lang_of[i]] if i in bm25 else 0.0) for i, score in cosine.items()}
        expected = sorted(fused, key=lambda i: (-fused[i], i))[:7]
        got = _hits(service, query, mode="hybrid", **{**params, "k": 7})
        assert [h["id"] for h in got] == expected, (langs, where)
        assert [h["score"] for h in got] == pytest.approx([fused[i] for i in expected], abs=1e-5)


def test_replace_and_delete_never_return_old_text_in_any_mode(each_engine: RunningService) -> None:
    service = each_engine
    service.index([{"id": "doc", "text": "the lighthouse keeper painted the tower", "lang": "en"},
                   {"id": "other", "text": "a ship passed the harbour", "lang": "en"}])
    service.index([{"id": "doc", "text": "der Leuchtturmwärter las ein Buch", "lang": "de"}])
    for mode in MODES:
        hits = _hits(service, "lighthouse keeper painted tower", mode=mode, k=10)
        assert all("lighthouse" not in h["text"] for h in hits), mode
    assert [h["id"] for h in _hits(service, "Leuchtturmwärter", mode="lexical")] == ["doc"]
    service.client.delete("/index/doc")
    for mode in MODES:
        assert "doc" not in [h["id"] for h in _hits(service, "der Leuchtturmwärter las ein Buch", mode=mode)], mode


@pytest.mark.parametrize("engine", list(ENGINES))
def test_restart_replays_what_was_written_while_down_into_the_lexical_index(
    make_settings: Any, tmp_path: Path, engine: str
) -> None:
    settings = engine_settings(make_settings, engine, tmp_path)
    with running_service(settings) as first:
        first.index(corpus(5))
        before = _hits(first, "en01w en02w", mode="lexical", k=20)

    async def write_while_down() -> None:
        client = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = DocStore(client, RedisKeys(settings.key_prefix))
        await store.upsert([("late", StoredDoc("Quantenschaumstoff entdeckt", "de"))])
        await store.delete(["en-0"])
        await client.aclose()

    asyncio.run(write_while_down())
    with running_service(settings) as second:
        assert [h["id"] for h in _hits(second, "quantenschaumstoff", mode="lexical")] == ["late"]
        after = _hits(second, "en01w en02w", mode="lexical", k=20)
        assert [h["id"] for h in after] == [h["id"] for h in before if h["id"] != "en-0"]
        stats = second.client.get("/index/stats").json()
        assert stats["lexical"]["documents"] == stats["documents"] == 20 and stats["lexical"]["engine"] == engine
        assert stats["lexical"]["applied_offset"] == stats["log_offset"] and stats["lexical"]["partitions"]["de"] == 6
    if engine == "replica":
        assert (settings.lexical_dir / "0" / "journal.jsonl").is_file()  # the same folder, reopened: not a second copy
        assert not (settings.lexical_dir / "1").exists()
    else:
        assert not settings.lexical_dir.exists()  # no index beside the replica: BM25 is in the collection


def test_lexical_off_refuses_the_modes_that_need_it(make_settings: Any) -> None:
    with running_service(make_settings(lexical=False)) as service:
        service.index(corpus(2))
        assert _hits(service, "en01w", mode="dense")
        response = service.client.post("/search", json={"query": "en01w", "mode": "hybrid"})
        assert response.status_code in (400, 422) and "XLING_LEXICAL" in response.text
        assert not service.settings.lexical_dir.exists()
        assert service.client.get("/index/stats").json()["lexical"] is None


def test_a_search_that_names_no_mode_gets_the_services_default(make_settings: Any) -> None:
    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (default.search_mode, default.fusion, default.fusion_normalise) == ("hybrid", "weighted", "language")
    with running_service(make_settings(search_mode=default.search_mode)) as service:
        service.index([{"id": "part", "text": "replacement part XK-4471-B for the pump", "lang": "en"}])
        hit = _hits(service, "XK-4471-B")[0]
        assert hit["id"] == "part" and set(hit["ranks"]) == {"dense", "lexical"}

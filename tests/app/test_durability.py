"""Restart, snapshots, log replay, and two replicas on one Redis."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aredis

from tests.app.helpers import assert_same_results
from tests.conftest import RunningService, running_service
from tests.synthetic import corpus
from xling.state.docstore import DocStore, StoredDoc
from xling.state.keys import RedisKeys

# An approximate index configured exhaustively (efSearch >= corpus) must behave as the exact one.
EXHAUSTIVE_HNSW = {"index": "hnsw", "hnsw_m": 16, "hnsw_ef_search": 1024, "hnsw_exact_filter_max": 0}
INDEX_KINDS = pytest.mark.parametrize("index_settings", [{}, EXHAUSTIVE_HNSW], ids=["flat", "hnsw"])
QUERIES = ["the cat sleeps on the mat", "die aktienmärkte fielen", "la rivière inonde", "el equipo ganó"]


def results(service: RunningService) -> list[list[tuple[str, float]]]:
    out = []
    for query in QUERIES:
        hits = service.client.post("/search", json={"query": query, "k": 8}).json()["hits"]
        out.append([(h["id"], h["score"]) for h in hits])
    return out


def snapshot_meta(service_settings: Any) -> dict[str, Any]:
    return json.loads((service_settings.indexes_dir / "tiny-mean" / "snapshot.json").read_text())


@INDEX_KINDS
def test_restart_gives_identical_results(
    make_settings: Any, caplog: pytest.LogCaptureFixture, index_settings: dict[str, Any]
) -> None:
    # Raw vectors: a rebuild from the documents would calibrate centring on this corpus, which the first run
    # (empty at start, no worker to recalibrate) served without. tests/app/test_centering.py covers restarts
    # and rebuilds of a centred index.
    settings = make_settings(**index_settings, centering=False)
    with running_service(settings) as first:
        first.index(corpus(20))
        first.client.delete("/index/en-3")
        before = results(first)
        log_offset = first.client.get("/index/stats").json()["log_offset"]
    # shutdown wrote a snapshot at the last applied offset
    assert snapshot_meta(settings)["applied_offset"] == log_offset
    assert snapshot_meta(settings)["count"] == 79

    with caplog.at_level("INFO"), running_service(settings) as second:
        assert_same_results(results(second), before)
    assert "snapshot loaded" in caplog.text

    shutil.rmtree(settings.indexes_dir)
    caplog.clear()
    with caplog.at_level("INFO"), running_service(settings) as rebuilt:
        assert_same_results(results(rebuilt), before)
    assert "encoding all documents" in caplog.text


@INDEX_KINDS
def test_start_up_replays_the_log_after_the_snapshot(make_settings: Any, index_settings: dict[str, Any]) -> None:
    settings = make_settings(**index_settings)
    with running_service(settings) as first:
        first.index(corpus(5))
    snapshot_offset = snapshot_meta(settings)["applied_offset"]

    async def write_while_down() -> None:
        client = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = DocStore(client, RedisKeys(settings.key_prefix))
        await store.upsert([("late", StoredDoc("wissenschaftler entdeckten wasser", "de"))])
        await store.delete(["en-0"])
        await client.aclose()

    asyncio.run(write_while_down())
    with running_service(settings) as second:
        assert second.search_ids("wissenschaftler entdeckten wasser", k=1) == ["late"]
        assert "en-0" not in second.search_ids("anything", k=100)
        stats = second.client.get("/index/stats").json()
        assert stats["vectors"] == 20 and stats["applied_offset"] == stats["log_offset"] != snapshot_offset


def test_snapshot_of_another_model_version_is_refused(make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings()
    with running_service(settings) as first:
        first.index(corpus(5))
        before = results(first)
    meta_path = settings.indexes_dir / "tiny-mean" / "snapshot.json"
    meta = json.loads(meta_path.read_text())
    meta["model_version"] = "some-other-model"
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level("INFO"), running_service(settings) as second:
        assert_same_results(results(second), before)  # rebuilt from the documents, not the foreign index
    assert "snapshot refused" in caplog.text and "some-other-model" in caplog.text
    assert json.loads(meta_path.read_text())["model_version"] == "tiny-mean"


def test_hnsw_serves_what_flat_serves_and_refuses_a_flat_snapshot(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flat = make_settings(centering=False)  # raw vectors on both sides: a rebuild would calibrate (see above)
    with running_service(flat) as service:
        service.index(corpus(10))
        service.client.post("/index", json={"documents": [{"id": "en-1", "text": "ein neuer text", "lang": "de"}]})
        service.client.delete("/index/fr-2")
        exact = results(service)
        filtered = service.client.post("/search", json={"query": QUERIES[0], "k": 5, "langs": ["de"]}).json()
    with caplog.at_level("INFO"), running_service(make_settings(**EXHAUSTIVE_HNSW, centering=False)) as approximate:
        found = results(approximate)
        # Same documents in the same order; scores agree up to float summation order (BLAS vs SIMD dot).
        assert [[doc_id for doc_id, _ in row] for row in found] == [[doc_id for doc_id, _ in row] for row in exact]
        assert np.allclose(
            [[score for _, score in row] for row in found], [[score for _, score in row] for row in exact], atol=1e-4
        )
        again = approximate.client.post("/search", json={"query": QUERIES[0], "k": 5, "langs": ["de"]}).json()
        assert [h["id"] for h in again["hits"]] == [h["id"] for h in filtered["hits"]]
        stats = approximate.client.get("/index/stats").json()["index"]
        assert stats == {"kind": "hnsw", "m": 16, "ef_construction": 80, "tombstones": 0, "compactions": 0}
    assert "snapshot refused" in caplog.text and '"kind": "flat"' in caplog.text
    assert snapshot_meta(flat)["index"] == {"kind": "hnsw", "m": 16, "ef_construction": 80}


def test_periodic_snapshots(make_settings: Any) -> None:
    settings = make_settings(snapshot_every_entries=10)
    with running_service(settings) as service:
        service.index(corpus(5))  # 20 entries
        deadline = time.monotonic() + 5
        while snapshot_meta(settings)["count"] != 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert snapshot_meta(settings)["count"] == 20


@INDEX_KINDS
def test_two_replicas_converge(make_settings: Any, index_settings: dict[str, Any]) -> None:
    settings = make_settings(**index_settings)
    with running_service(settings) as a, running_service(settings) as b:
        doc = {"id": "shared", "text": "une nouvelle bibliothèque a ouvert", "lang": "fr"}
        assert a.index([doc]).status_code == 200
        deadline = time.monotonic() + 2
        while b.search_ids(doc["text"], k=1) != ["shared"]:
            assert time.monotonic() < deadline, "replica b did not see the write within 2 s"
            time.sleep(0.02)
        assert b.client.delete("/index/shared").status_code == 200
        deadline = time.monotonic() + 2
        while "shared" in a.search_ids(doc["text"], k=5):
            assert time.monotonic() < deadline, "replica a did not see the delete within 2 s"
            time.sleep(0.02)
        b.index(corpus(4))
        deadline = time.monotonic() + 2
        while a.client.get("/index/stats").json()["vectors"] != 16:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert_same_results(results(a), results(b))

"""Serving-side centring: means calibrated on the served corpus, documents and queries centred with the right
language's mean, the same means across restarts, rebuilds and swaps, and the recalibration the api asks for."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aredis

from tests.app.helpers import assert_same_results
from tests.conftest import RunningService, running_service
from tests.synthetic import LANGS, corpus
from xling.models.centering import Centering, center
from xling.models.encoder import Encoder
from xling.models.resolve import resolve_model
from xling.state.centering import centering_folder, query_language
from xling.state.docstore import DocStore, StoredDoc
from xling.state.indexing import load_encoder
from xling.state.jobstore import JobStore
from xling.state.keys import RedisKeys
from xling.state.settings import Settings
from xling.worker.runner import run_job

PER_LANG = 8
RARE = {"id": "sw-0", "text": "en01w de02w fr03w", "lang": "sw"}  # one Swahili document: below the count


def write_corpus(settings: Settings, docs: list[dict[str, Any]]) -> None:
    """Documents already in Redis when the service starts (a corpus it calibrates on while building)."""

    async def write() -> None:
        client = aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        store = DocStore(client, RedisKeys(settings.key_prefix))
        await store.upsert([(d["id"], StoredDoc(d["text"], d.get("lang"))) for d in docs])
        await client.aclose()

    asyncio.run(write())


def served_encoder(settings: Settings) -> Encoder:
    return load_encoder(resolve_model(settings.retrieval_model, settings.models_dir), settings)


def served_means(settings: Settings, version: str) -> Centering:
    centering = Centering.load(centering_folder(settings, version))
    assert centering is not None, "no means file"
    return centering


def search(service: RunningService, query: str, **params: Any) -> dict[str, Any]:
    response = service.client.post("/search", json={"query": query, "k": 100, **params})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_startup_calibrates_on_the_corpus_and_centres_documents_and_queries(make_settings: Any) -> None:
    settings = make_settings(centering_min_docs=5)
    docs = [*corpus(PER_LANG), RARE]
    write_corpus(settings, docs)
    with running_service(settings) as service:
        version = service.client.get("/healthz").json()["model_version"]
        centering = served_means(settings, version)
        assert service.client.get("/healthz").json()["centering"] == f"calibrated:{centering.id}"
        assert centering.languages == sorted(LANGS) and "sw" not in centering.means
        assert centering.counts == {lang: PER_LANG for lang in LANGS} and centering.corpus_size == len(docs)

        encoder = served_encoder(settings)
        for lang in LANGS:  # each mean is numpy's mean of that language's passage vectors
            texts = [d["text"] for d in docs if d["lang"] == lang]
            np.testing.assert_allclose(centering.means[lang], encoder.encode(texts, "passage").mean(axis=0),
                                       rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(centering.fallback, np.mean([centering.means[x] for x in LANGS], axis=0),
                                   rtol=1e-5, atol=1e-6)

        by_id = {d["id"]: d for d in docs}
        query = docs[3]["text"]
        raw_query = encoder.encode([query], "query")
        for query_lang in ("de", "fr", None):
            body = search(service, query, **({"query_lang": query_lang} if query_lang else {}))
            lang = query_lang or query_language(query, None, encoder, centering).centre
            expected_query = center(raw_query, [lang or ""], centering.means, centering.query_mean)[0]
            assert len(body["hits"]) == len(docs)
            for hit in body["hits"]:
                doc = by_id[hit["id"]]
                raw_doc = encoder.encode([doc["text"]], "passage")
                # Swahili has no mean: its document is centred on the fallback.
                mean = centering.means.get(doc["lang"], centering.fallback)
                expected_doc = center(raw_doc, ["x"], {"x": mean})[0]
                assert hit["score"] == pytest.approx(float(expected_query @ expected_doc), abs=2e-5), hit

        embedded = service.client.post("/v1/embeddings", json={"input": [query], "model": version}).json()
        assert embedded["centred"] is True and embedded["centering"] == centering.id
        assert np.asarray(embedded["data"][0]["embedding"]) @ expected_query == pytest.approx(1.0, abs=1e-5)
        active = service.client.get("/models/active").json()["centering"]
        assert active["id"] == centering.id and active["recalibrate"] is False
        assert active["languages"] == centering.languages and active["languages"]  # the means', not the drift's
        assert set(active["drift"]) <= {"unknown", *(d["lang"] for d in docs)}


def test_restarts_and_rebuilds_keep_the_frozen_means(make_settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(centering_min_docs=5)
    write_corpus(settings, corpus(PER_LANG))
    probes = [d["text"] for d in corpus(PER_LANG)[::7]]

    def results(service: RunningService) -> tuple[str, list[list[tuple[str, float]]]]:
        found = [[(h["id"], h["score"]) for h in search(service, q)["hits"]] for q in probes]
        return service.client.get("/healthz").json()["centering"], found

    with running_service(settings) as first:
        before = results(first)
        version = first.client.get("/healthz").json()["model_version"]
    assert before[0].startswith("calibrated:")
    means_id = before[0].split(":", 1)[1]
    assert (settings.indexes_dir / version / f"centred-{means_id}" / "snapshot.json").is_file()

    with caplog.at_level("INFO"), running_service(settings) as second:
        state, found = results(second)
        assert state == before[0]
        assert_same_results(found, before[1])
    assert "snapshot loaded" in caplog.text

    # More documents in Redis, and no snapshot: the rebuild centres with the frozen means, not new ones.
    write_corpus(settings, [{"id": f"extra-{i}", "text": f"en{i:02d}w en{i + 1:02d}w", "lang": "en"}
                            for i in range(20)])
    shutil.rmtree(settings.indexes_dir)
    caplog.clear()
    with caplog.at_level("INFO"), running_service(settings) as rebuilt:
        state, found = results(rebuilt)
        assert state == before[0]
        assert_same_results([[hit for hit in hits if not hit[0].startswith("extra-")] for hits in found], before[1])
    assert "encoding all documents" in caplog.text


def test_centering_off_serves_raw_vectors(make_settings: Any) -> None:
    settings = make_settings(centering=False, centering_min_docs=2)
    docs = corpus(4)
    with running_service(settings) as service:
        assert service.index(docs).status_code == 200
        version = service.client.get("/healthz").json()["model_version"]
        assert service.client.get("/healthz").json()["centering"] == "off"
        encoder = served_encoder(settings)
        hit = search(service, docs[0]["text"], k=1)["hits"][0]
        raw = encoder.encode([docs[0]["text"]], "query") @ encoder.encode([docs[0]["text"]], "passage").T
        assert hit["id"] == docs[0]["id"] and hit["score"] == pytest.approx(float(raw[0, 0]), abs=2e-5)
        embedded = service.client.post("/v1/embeddings", json={"input": ["x"], "model": version}).json()
        assert embedded["centred"] is False and embedded["centering"] is None
    assert not centering_folder(settings, version).exists()


def expected_scores(settings: Settings, centering: Centering, query: str, hits: list[dict[str, Any]],
                    by_id: dict[str, dict[str, Any]]) -> list[float]:
    """What the served means make of `query` against each hit, from the encoder: every document centred on its
    language's mean (or the fallback), the query on its detected language's."""
    encoder = served_encoder(settings)
    lang = query_language(query, None, encoder, centering).centre
    centred_query = center(encoder.encode([query], "query"), [lang or ""], centering.means, centering.query_mean)[0]
    raw = encoder.encode([by_id[h["id"]]["text"] for h in hits], "passage")
    docs = centering.documents(raw, [by_id[h["id"]]["lang"] for h in hits])
    return [float(centred_query @ vector) for vector in docs]


def test_an_uncalibrated_service_calibrates_from_its_own_vectors_without_a_job(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Started empty, the service serves raw vectors; once a language has enough documents the api takes the means
    from the vectors its index already holds (no job, no encoding of the corpus: only a few texts as queries)
    and centres its index in place: the scores are those of documents encoded afresh and centred."""
    settings = make_settings(centering_min_docs=5, swap_poll_s=0.2, centering_requeue_s=1)
    docs = corpus(6)
    by_id = {d["id"]: d for d in docs}
    with caplog.at_level("INFO"), running_service(settings) as service:
        assert service.client.get("/healthz").json()["centering"] == "uncalibrated"
        assert service.index(docs).status_code == 200
        state = wait(lambda: (s := service.client.get("/healthz").json()["centering"]).startswith("calibrated:") and s)
        version = service.client.get("/healthz").json()["model_version"]
        centering = served_means(settings, version)
        assert state == f"calibrated:{centering.id}" and centering.languages == sorted(LANGS)
        assert service.client.get("/jobs", params={"type": "reindex"}).json()["data"] == []  # no job was needed
        encoder = served_encoder(settings)
        for lang in LANGS:  # each mean is that language's passage vectors' mean, read from the index
            texts = [d["text"] for d in docs if d["lang"] == lang]
            np.testing.assert_allclose(centering.means[lang], encoder.encode(texts, "passage").mean(axis=0),
                                       rtol=1e-5, atol=1e-6)
        for query in (docs[3]["text"], docs[17]["text"]):
            hits = search(service, query)["hits"]
            assert len(hits) == len(docs)
            expected = expected_scores(settings, centering, query, hits, by_id)
            np.testing.assert_allclose([h["score"] for h in hits], expected, atol=2e-5)
    # The empty index at start-up was the one build; the means were applied to the vectors it grew.
    assert "means swapped" in caplog.text and caplog.text.count("encoding all documents") == 1


def test_a_recalibration_job_reports_its_steps_and_the_service_serves_its_means(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked for by hand, a recalibration is a worker's job (run here in-process): /healthz names it while it
    waits, its progress shows each step, and the service then serves the job's means."""
    settings = make_settings(centering_min_docs=5, swap_poll_s=0.2, centering_drift_threshold=10.0)
    docs = corpus(12)
    with running_service(settings) as service:
        assert service.index(docs[:24]).status_code == 200  # 6 per language: calibrated by the api
        wait(lambda: service.client.get("/healthz").json()["centering"].startswith("calibrated:"))
        assert service.index(docs[24:]).status_code == 200  # 6 more each: drift under the (high) threshold
        version = service.client.get("/healthz").json()["model_version"]
        response = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
        job_id = response.json()["job_id"]
        coming = service.client.get("/healthz").json()["calibration"]
        assert coming["job_id"] == job_id and coming["status"] == "queued", coming
        assert service.client.get("/models/active").json()["centering"]["job"] == coming

        run_job(job_id, settings)
        done = service.client.get(f"/jobs/{job_id}").json()
        assert done["status"] == "succeeded", done
        steps = [json.loads(fields["data"]) for _, fields in JobStore(
            redis.Redis.from_url(settings.redis_url, decode_responses=True), RedisKeys(settings.key_prefix)
        ).events(job_id) if fields["type"] == "progress"]
        calibrating = [(p["step"], p["done"], p["total"]) for p in steps if p["stage"] == "calibrating" and "done" in p]
        assert ("sampling", 48, 48) in calibrating and ("passages", 48, 48) in calibrating, calibrating
        reindexing = [p for p in steps if p["stage"] == "reindexing"]
        assert reindexing[-1]["done"] == reindexing[-1]["total"] == 48 and "rate_per_s" in reindexing[-1]
        assert done["progress"]["stage"] == "succeeded" and done["progress"]["last_stage"] == "reindexing"
        wait(lambda: service.client.get("/healthz").json()["centering"] == f"calibrated:{done['metrics']['centering']}")
        assert served_means(settings, version).counts == {lang: 12 for lang in LANGS}
        assert service.client.get("/models/active").json()["version"] == version  # the same version, new means
        assert service.client.get("/healthz").json()["calibration"] is None  # none coming now


def wait(condition: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_recalibration_can_be_asked_for_by_hand(make_settings: Any) -> None:
    with running_service(make_settings()) as service:
        version = service.client.get("/healthz").json()["model_version"]  # the configured default: no registry
        response = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
        assert response.status_code == 202, response.text
        job = service.client.get(f"/jobs/{response.json()['job_id']}").json()
        assert job["type"] == "reindex" and job["params"] == {"version": version, "recalibrate": True}
        plain = service.client.post("/jobs/reindex", json={"version": version})
        assert plain.status_code == 422 and "not a registry version" in plain.text
    with running_service(make_settings(centering=False)) as service:
        refused = service.client.post("/jobs/reindex", json={"version": version, "recalibrate": True})
        assert refused.status_code == 422 and "needs centring on" in refused.text


def test_documents_of_a_new_language_applied_while_the_means_are_calibrated_ask_for_the_next_recalibration(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The calibration samples the corpus, then documents of other languages arrive before its means are served:
    the means lack those languages, and the service, swapped to them, calibrates again (the documents are in the
    index, though never counted as drift) until every language has its mean."""
    from xling.serving import recentring

    settings = make_settings(centering_min_docs=5, swap_poll_s=0.2, centering_requeue_s=1)
    docs = corpus(6)
    english = [d for d in docs if d["lang"] == "en"]
    late = [d for d in docs if d["lang"] != "en"]
    with caplog.at_level("INFO"), running_service(settings) as service:
        sample_then_receive = recentring.sample_corpus

        seen: list[dict[str, Any]] = []

        def sample_corpus(*args: Any, **kwargs: Any) -> Any:
            sample = sample_then_receive(*args, **kwargs)
            if late:
                seen.append(service.client.get("/healthz").json()["calibration"])  # what a user sees meanwhile
                assert service.index(late).status_code == 200  # applied once the sample was drawn
                late.clear()
            return sample

        monkeypatch.setattr(recentring, "sample_corpus", sample_corpus)
        assert service.index(english).status_code == 200
        version = service.client.get("/healthz").json()["model_version"]
        wait(lambda: Centering.load(centering_folder(settings, version)) is not None
             and served_means(settings, version).languages == sorted(LANGS))
        wait(lambda: service.client.get("/healthz").json()["centering"]
             == f"calibrated:{served_means(settings, version).id}")
        active = service.client.get("/models/active").json()["centering"]
        assert active["languages"] == sorted(LANGS) and not active["recalibrate"], active
    assert seen[0]["status"] == "running" and seen[0]["progress"]["stage"] == "calibrating in the api", seen
    assert seen[0]["progress"]["reasons"] == ["en has 6 documents"]
    rounds = [r.__dict__["languages"] for r in caplog.records if r.getMessage() == "centring: recalibrated by the api"]
    assert rounds == [["en"], sorted(LANGS)], rounds

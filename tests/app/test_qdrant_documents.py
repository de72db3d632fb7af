"""XLING_DOCUMENT_STORE=qdrant: no Redis document hash. Log entries carry the documents, the applier writes
them into the serving collection, and that collection's payload answers reads by id, hits' texts, counts and
every build (a rebuild, a restart's replay, the worker's reindex input), through qdrant-client's local mode."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from tests.app.test_qdrant_serving import DOCS, collection, qdrant_of
from tests.conftest import TEST_KEYS, doc_store_call, running_service
from tests.synthetic import corpus
from xling.models.encoder import Encoder
from xling.models.index.lexical import LexicalIndex
from xling.state.docstore import DocReader, LogEntry, StoredDoc, offset_key
from xling.state.indexing import apply_entries, build_index, index_spec
from xling.state.qdrant_documents import CollectionCorpus
from xling.state.qdrant_store import STORE_OF_RECORD, QdrantStore
from xling.state.retention import LogRetention
from xling.state.settings import Settings
from xling.worker.build_tiers import copy_to_collection, open_corpus
from xling.worker.reindex import write_plan


def documents_settings(make_settings: Any, tmp_path: Path, **more: Any) -> Settings:
    return make_settings(  # type: ignore[no-any-return]
        index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix, document_store="qdrant", **more
    )


def recorded_offset(client: redis.Redis, name: str) -> str:
    records = [json.loads(raw) for raw in client.hvals(TEST_KEYS.qdrant_collections)]
    (offset,) = [record["offset"] for record in records if record["collection"] == name]
    return str(offset)


def test_documents_are_read_from_the_collection_and_never_written_to_a_hash(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = documents_settings(make_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        assert not client.exists(TEST_KEYS.docs)
        logged = [fields for _, fields in client.xrange(TEST_KEYS.doclog)]
        assert [json.loads(f["doc"])["text"] for f in logged] == [d["text"] for d in DOCS]

        hits = service.client.post("/search", json={"query": DOCS[1]["text"], "k": 1, "langs": ["de"]}).json()["hits"]
        assert (hits[0]["id"], hits[0]["text"], hits[0]["lang"], hits[0]["metadata"]) == ("b", *map(DOCS[1].get, (
            "text", "lang", "metadata")))
        assert service.client.get("/index/c").json()["text"] == DOCS[2]["text"]
        assert service.client.get("/index/stats").json()["documents"] == 3

        service.index([{"id": "a", "text": "es20w es21w", "lang": "es", "metadata": {"shelf": 9}}])
        assert service.client.get("/index/a").json() == {
            "id": "a", "text": "es20w es21w", "lang": "es", "metadata": {"shelf": 9}}
        response = service.client.post("/index/delete", json={"ids": ["c", "never-there"]})
        assert response.json()["deleted"] == 1 and response.json()["missing"] == ["never-there"]
        assert response.json()["applied"] is True and response.json()["log_offset"]
        assert service.client.get("/index/c").status_code == 404
        assert service.client.delete("/index/c").status_code == 404
        assert service.client.get("/index/stats").json()["documents"] == 2
        assert not client.exists(TEST_KEYS.docs)

        # A rebuild reads the serving collection (a scroll) and replays the log from its recorded offset.
        before = collection(service)
        service.app.state.engine.swap.rebuild()
        after = collection(service)
        assert after != before
        assert {p.payload["id"]: p.payload["text"] for p in qdrant_of(service).scroll(after, with_payload=True)[0]
                if p.payload} == {"a": "es20w es21w", "b": DOCS[1]["text"]}
        assert service.search_ids("es20w es21w", k=5, langs=["es"]) == ["a"]
        assert service.client.get("/index/b").json()["metadata"] == DOCS[1]["metadata"]
        # the log is held, for good, at what the serving collection has recorded
        hold = json.loads(client.hget(TEST_KEYS.log_holds, STORE_OF_RECORD) or "{}")
        assert hold["offset"] == recorded_offset(client, after)
    client.close()


def test_trimming_never_passes_the_serving_collection_and_a_restart_replays_documents_from_the_log(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = documents_settings(make_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        served = collection(service)

    # Written while the api is down: in the log only (there is no hash), and every api hold has lapsed.
    doc_store_call(settings.redis_url, "upsert", [("d", StoredDoc("en13w en14w en15w", "en", {"shelf": 4}))],
                   in_hash=False)
    for holder in client.hkeys(TEST_KEYS.log_holds):
        if holder != STORE_OF_RECORD:
            client.hdel(TEST_KEYS.log_holds, holder)
    trimmed = LogRetention(client, TEST_KEYS).trim()
    assert trimmed is not None
    assert offset_key(trimmed) <= offset_key(recorded_offset(client, served))
    assert client.xlen(TEST_KEYS.doclog) >= 1  # "d" survives the trim: nothing holds it but the log
    with running_service(settings) as service:
        assert collection(service) == served  # reopened, with the log replayed into it
        assert service.client.get("/index/d").json() == {
            "id": "d", "text": "en13w en14w en15w", "lang": "en", "metadata": {"shelf": 4}}
        assert service.search_ids("en13w en14w en15w", k=10, filter={"shelf": 4}) == ["d"]  # its vector is there
        assert service.client.get("/index/stats").json()["documents"] == 4
    client.close()


def test_a_deployment_with_the_hash_switches_to_documents_in_qdrant(make_settings: Any, tmp_path: Path) -> None:
    """Served from Qdrant with the hash first, then with XLING_DOCUMENT_STORE=qdrant: the collection's payload
    already holds every document, an old-format entry still unapplied is resolved through the hash, and from
    then on nothing is written to the hash."""
    before = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix)
    client = redis.Redis.from_url(before.redis_url, decode_responses=True)
    with running_service(before) as service:
        assert service.index(DOCS).status_code == 200
        served = collection(service)
    doc_store_call(before.redis_url, "upsert", [("b", StoredDoc("de30w de31w", "de", {"shelf": 7}))])  # old format
    hashed = client.hgetall(TEST_KEYS.docs)
    after = documents_settings(make_settings, tmp_path)
    with running_service(after) as service:
        assert collection(service) == served
        assert service.client.get("/index/b").json()["text"] == "de30w de31w"  # replayed through the hash
        assert service.index([{"id": "e", "text": "es40w es41w", "lang": "es"}]).status_code == 200
        assert service.client.get("/index/e").json()["text"] == "es40w es41w"
        assert service.client.post("/index/delete", json={"ids": ["a"]}).json()["deleted"] == 1
        assert client.hgetall(TEST_KEYS.docs) == hashed  # the hash is left as it was
        service.app.state.engine.swap.rebuild()  # reads the collection, not the stale hash
        assert service.client.get("/index/a").status_code == 404
        assert service.client.get("/index/stats").json()["documents"] == 3  # b, c, e
        assert service.search_ids("es40w es41w", k=5, langs=["es"]) == ["e"]
    client.close()


def test_inline_entries_carry_the_state_and_the_last_one_of_an_id_wins(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # A hash left from before the switch to documents in Qdrant: it must not bring back "y", deleted inline.
    client.hset(TEST_KEYS.docs, mapping={"y": StoredDoc("en01w stale", "en").to_json(),
                                         "z": StoredDoc("en02w from the hash", "en").to_json()})
    entries = [
        LogEntry("1-0", "upsert", "x", inline=True, doc=StoredDoc("en03w first", "en")),
        LogEntry("2-0", "upsert", "z"),  # an entry of the old format: the hash says what z is
        LogEntry("3-0", "delete", "y", inline=True),
        LogEntry("4-0", "upsert", "x", inline=True, doc=StoredDoc("en04w second", "en")),
    ]
    lexical = LexicalIndex(tmp_path / "lexical")
    apply_entries(entries, DocReader(client, TEST_KEYS), None, lexical)
    assert lexical.applied_offset == "4-0"
    assert [hit.ext_id for hit in lexical.search("en04w", 5)] == ["x"]
    assert lexical.search("en03w", 5) == []  # the first entry of x was overtaken by the last
    assert [hit.ext_id for hit in lexical.search("en02w", 5)] == ["z"]
    assert lexical.search("en01w", 5) == []
    lexical.close()
    assert LogEntry.parse("5-0", {"op": "delete", "id": "y", "doc": ""}) == LogEntry("5-0", "delete", "y", True)
    assert LogEntry.parse("6-0", {"op": "upsert", "id": "w"}) == LogEntry("6-0", "upsert", "w")
    client.close()


def test_a_worker_reads_the_serving_collection_at_its_recorded_offset(
    make_settings: Any, tmp_path: Path, tiny_model: Path
) -> None:
    """The server path, played in one process (the local mode lets one process open the folder): what the
    reindex input and the copy into a new collection read."""
    settings = documents_settings(make_settings, tmp_path)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        served = collection(service)
    store = QdrantStore(settings, client, TEST_KEYS, holder="worker")
    corpus = store.corpus(DocReader(client, TEST_KEYS))
    assert isinstance(corpus, CollectionCorpus) and corpus.index.collection == served
    assert corpus.start_offset() == recorded_offset(client, served)
    assert corpus.count() == 3
    assert {i: (d.text, d.lang, d.metadata) for chunk in corpus.iter_all(2) for i, d in chunk} == {
        d["id"]: (d["text"], d["lang"], d["metadata"]) for d in DOCS}
    assert set(corpus.get_many(["a", "nope", "c"])) == {"a", "c"}

    plan = write_plan(corpus, tmp_path / "ranges", "job", _source(tiny_model), 2, None)
    assert plan.offset == corpus.start_offset() and sum(plan.sizes) == 3
    encoder = Encoder(tiny_model, version="tiny", device="cpu")
    built = build_index(corpus, encoder, index_spec(settings))
    copied = copy_to_collection(store, built, corpus)
    texts = {p.payload["id"]: p.payload["text"] for p in store.client.scroll(copied.index.collection,  # type: ignore[union-attr]
                                                                              with_payload=True)[0] if p.payload}
    assert texts == {d["id"]: d["text"] for d in DOCS}
    store.close()

    with pytest.raises(RuntimeError, match="local-mode folder"), open_corpus(settings, client, TEST_KEYS):
        pass
    client.close()


def test_in_local_mode_the_api_recalibrates_and_swaps_to_a_collection_built_from_the_serving_one(
    make_settings: Any, tmp_path: Path
) -> None:
    """No worker may read the local-mode folder that holds the documents: once a language has enough of them,
    the api calibrates means itself (no job), then builds a collection with them from the serving collection's
    payload and swaps to it."""
    settings = documents_settings(make_settings, tmp_path, centering_min_docs=5, swap_poll_s=0.2,
                                  centering_requeue_s=1)
    docs = corpus(6)
    with running_service(settings) as service:
        assert service.client.get("/healthz").json()["centering"] == "uncalibrated"
        raw = collection(service)
        assert service.index(docs).status_code == 200
        deadline = time.monotonic() + 60
        while not service.client.get("/healthz").json()["centering"].startswith("calibrated:"):
            assert time.monotonic() < deadline, "the api never recalibrated"
            time.sleep(0.2)
        assert collection(service) != raw
        assert service.client.get("/jobs", params={"type": "reindex"}).json()["data"] == []
        assert service.client.get("/index/stats").json()["documents"] == len(docs)
        for doc in docs[::5]:
            hit = service.client.post("/search", json={"query": doc["text"], "k": 1}).json()["hits"][0]
            assert (hit["id"], hit["text"]) == (doc["id"], doc["text"])


def _source(model: Path) -> Any:
    from xling.models.resolve import ModelSource

    return ModelSource(model, "tiny", "folder", str(model))


def test_documents_in_qdrant_need_the_qdrant_index(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="XLING_DOCUMENT_STORE=qdrant needs XLING_INDEX=qdrant"):
        Settings(_env_file=None, document_store="qdrant")  # type: ignore[call-arg]
    assert Settings(_env_file=None, index="qdrant", qdrant_path=tmp_path,  # type: ignore[call-arg]
                    document_store="qdrant").documents_in_qdrant

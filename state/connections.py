"""Redis clients, made one way by every process: a command that meets a dropped connection is retried on a new one.

A pooled connection opened before Redis restarted is only found dead when it is next used. Without a retry
that one command fails (the api answered one `503 store_unavailable` per pooled connection after a restart,
with /readyz already 200); with it, the command is sent again on a fresh connection. Retried commands are
safe here: writes are idempotent (a document set twice is the same document; a log entry applied twice
converges, see `xling.app.applier`)."""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

RETRIES = 3
RETRY_ON = [redis.ConnectionError, redis.TimeoutError]


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=1.0, base=0.05)  # 50, 100, 200 ms: a restart, not an outage, is what it covers


def redis_client(url: str, socket_timeout: float | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, retry=Retry(_backoff(), RETRIES), retry_on_error=RETRY_ON,
        socket_timeout=socket_timeout,
    )


def async_redis_client(url: str) -> aredis.Redis:
    return aredis.Redis.from_url(
        url, decode_responses=True, retry=AsyncRetry(_backoff(), RETRIES), retry_on_error=RETRY_ON
    )

"""The embedded Redis that `xling serve` starts when no Redis is configured."""

from __future__ import annotations

from pathlib import Path


def test_embedded_redis_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    import redis as redis_client

    from xling.state.embedded_redis import EmbeddedRedis
    from xling.state.settings import Settings

    assert Settings(_env_file=None).embedded_redis_fsync == "always"  # type: ignore[call-arg]
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis_client.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()

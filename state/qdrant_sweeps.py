"""Collections that no longer serve, dropped: those a rebuild replaced, once their grace period is over, and those a
build that crashed left unrecorded. Never the collection the serving alias names."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from qdrant_client import QdrantClient

from xling.models.index.qdrant_index import alias_target
from xling.state.keys import RedisKeys
from xling.state.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


class CollectionSweeps:
    """The sweeps of one deployment (its key prefix); `alias`: the serving alias, whose collection stays."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, keys: RedisKeys, client: QdrantClient,
                 alias: str) -> None:
        self.settings = settings
        self.redis = redis_client
        self.keys = keys
        self.client = client
        self.alias = alias

    def drop_retired(self) -> list[str]:
        """Drop the retired collections whose grace period is over (never the one the alias names)."""
        due = self.redis.zrangebyscore(
            self.keys.qdrant_retired, "-inf", time.time() - self.settings.qdrant_drop_after_s
        )
        if not due:
            return []
        serving = alias_target(self.client, self.alias)
        dropped = []
        for raw in due:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name != serving and self.client.collection_exists(name):
                self.client.delete_collection(name)
                dropped.append(name)
            self.redis.delete(self.keys.qdrant_lengths(name))
            self.redis.zrem(self.keys.qdrant_retired, name)
        if dropped:
            log.info("qdrant: retired collections dropped", extra={"collections": dropped})
        return dropped

    def sweep_unrecorded(self) -> list[str]:
        """Drop the collections this deployment created (their metadata says so) that no build recorded, once
        they are `qdrant_sweep_after_s` old: a build that crashed between creating its collection and recording
        it leaves one behind. A slot whose build claim is held right now is left alone."""
        recorded = {json.loads(raw)["collection"] for raw in self.redis.hvals(self.keys.qdrant_collections)}
        serving = alias_target(self.client, self.alias)
        swept = []
        for listed in self.client.get_collections().collections:
            name = listed.name
            if name in recorded or name == serving:
                continue
            made = self.client.get_collection(name).config.metadata or {}
            if made.get("xling_prefix") != self.settings.key_prefix:
                continue  # another deployment's, or not xling's at all
            if time.time() - float(made.get("created", time.time())) < self.settings.qdrant_sweep_after_s:
                continue
            if self.redis.exists(self.keys.qdrant_writer(f"build:{made.get('slot')}")):
                continue
            self.client.delete_collection(name)
            self.redis.delete(self.keys.qdrant_lengths(name))
            swept.append(name)
        if swept:
            log.warning("qdrant: collections no build recorded were dropped", extra={"collections": swept})
        return swept

"""The model registry (DATA_DIR/models/<version>/ with xling.json) and which version is active (Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from xling.models.files import remove_dir
from xling.models.manifest import Manifest, read_manifest
from xling.models.resolve import is_safe_version
from xling.state.keys import RedisKeys


class Registry:
    def __init__(self, client: redis.Redis, keys: RedisKeys, models_dir: Path) -> None:
        self.client = client
        self.keys = keys
        self.models_dir = models_dir

    def versions(self) -> list[dict[str, Any]]:
        """Every registered version's manifest, newest first."""
        found = []
        if self.models_dir.is_dir():
            for folder in self.models_dir.iterdir():
                manifest = read_manifest(folder) if folder.is_dir() else None
                if manifest is not None:
                    found.append(manifest.to_dict())
        return sorted(found, key=lambda m: m["created_at"], reverse=True)

    def delete(self, version: str, indexes_dir: Path) -> None:
        """Remove a version's folder and its index snapshot (callers check it is not in use)."""
        for folder in (self.models_dir / version, indexes_dir / version):
            remove_dir(folder)

    def manifest(self, version: str) -> Manifest | None:
        return read_manifest(self.models_dir / version) if is_safe_version(version) else None

    def has(self, version: str) -> bool:
        return self.manifest(version) is not None

    def active(self) -> str | None:
        """The activated version; None = serve the configured default (XLING_RETRIEVAL_MODEL)."""
        value: Any = self.client.get(self.keys.active_model)
        return str(value) if value else None

    def rollback_target(self) -> str | None:
        """The version that served before the last activation; None = the configured default (or no activation)."""
        value: Any = self.client.get(self.keys.previous_model)
        return str(value) if value else None

    def activate(self, version: str | None) -> None:
        """Make every api serve `version` (None: back to the configured default); each api's swap watcher polls the
        active version. The version it replaces becomes the rollback target (kept from deletion)."""
        previous = self.active()
        if previous == version:
            return
        with self.client.pipeline(transaction=True) as pipe:
            if version is None:
                pipe.delete(self.keys.active_model)
            else:
                pipe.set(self.keys.active_model, version)
            pipe.set(self.keys.previous_model, previous or "")
            pipe.execute()

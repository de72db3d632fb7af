"""Every Redis key xling uses; no other module spells one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "xling"

    @property
    def docs(self) -> str:
        """Hash: document id -> JSON {text, lang, metadata}."""
        return f"{self.prefix}:docs"

    @property
    def doclog(self) -> str:
        """Stream: one entry {op: upsert|delete, id} per document write, in commit order."""
        return f"{self.prefix}:doclog"

    @property
    def active_model(self) -> str:
        """String: the model version every api should serve."""
        return f"{self.prefix}:model:active"

"""`xling.json`: the self-description written beside every model version's weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from xling.models.files import utc_now_iso, write_json_atomic

MANIFEST_FILE = "xling.json"


@dataclass
class Manifest:
    version: str
    base_model: str
    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = 256
    training: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # provenance of imported weights
    # Per-language LoRA adapters (models/adapters): language -> what bundle.py records of it (path, data, accuracy).
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now_iso)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        missing = {"version", "base_model"} - data.keys()
        if missing:
            raise ValueError(f"{MANIFEST_FILE} lacks required fields: {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid manifest: {exc}") from exc


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(folder / MANIFEST_FILE, manifest.to_dict())

"""The model registry alone: versions are folders with an xling.json, the active one and its rollback in Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from xling.models.manifest import Manifest, write_manifest
from xling.state.keys import RedisKeys
from xling.state.registry import Registry


@pytest.fixture
def registry(redis_url: str, tmp_path: Path) -> Iterator[Registry]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield Registry(client, RedisKeys("registry-test"), tmp_path / "models")
    client.close()


def register(registry: Registry, version: str, created_at: str) -> None:
    write_manifest(registry.models_dir / version, Manifest(version=version, base_model="tiny", created_at=created_at))


def test_versions_are_the_folders_with_a_manifest_newest_first(registry: Registry) -> None:
    register(registry, "v1", "2026-01-01T00:00:00+00:00")
    register(registry, "v2", "2026-02-01T00:00:00+00:00")
    (registry.models_dir / "not-a-model").mkdir()
    assert [m["version"] for m in registry.versions()] == ["v2", "v1"]
    assert registry.has("v1") and not registry.has("not-a-model") and not registry.has("../v1")


def test_activation_keeps_the_one_before_as_rollback_target(registry: Registry) -> None:
    assert registry.active() is None and registry.rollback_target() is None
    registry.activate("v1")
    registry.activate("v2")
    assert (registry.active(), registry.rollback_target()) == ("v2", "v1")
    registry.activate("v2")  # activating what serves changes nothing
    assert registry.rollback_target() == "v1"
    registry.activate(None)  # back to the configured default
    assert (registry.active(), registry.rollback_target()) == (None, "v2")


def test_delete_removes_the_version_and_its_index(registry: Registry, tmp_path: Path) -> None:
    register(registry, "v1", "2026-01-01T00:00:00+00:00")
    indexes = tmp_path / "indexes"
    (indexes / "v1").mkdir(parents=True)
    registry.delete("v1", indexes)
    assert not registry.has("v1") and not (indexes / "v1").exists() and registry.versions() == []

"""Fixtures for tests of the HTTP layer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RunningService, running_service


@pytest.fixture(scope="module")
def hardened(module_settings: Any, request: pytest.FixtureRequest) -> Iterator[RunningService]:
    """A service a whole module shares, with small upload limits (8 MiB unpacked, ratio 50)."""
    name = "hardening-" + request.module.__name__.rsplit(".", 1)[-1]
    settings = module_settings(name, max_unpacked_bytes=8 * 1024 * 1024, max_zip_ratio=50)
    with running_service(settings) as service:
        yield service

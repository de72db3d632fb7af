"""Helpers for tests of the HTTP layer: the one error shape, uploads, zips, result comparisons."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

from tests.conftest import RunningService


def assert_error_shape(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code", "errors"}, body
    assert isinstance(body["detail"], str) and isinstance(body["code"], str) and isinstance(body["errors"], list)
    return dict(body)


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(service: RunningService, name: str, filename: str, payload: bytes) -> Any:
    return service.client.post("/datasets", data={"name": name}, files={"file": (filename, payload)})


def stored(service: RunningService) -> set[str]:
    names = {d["name"] for d in service.client.get("/datasets").json()["data"]}
    folder = service.settings.datasets_dir
    leftovers = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return names | leftovers


def assert_same_results(found: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]]) -> None:
    """The same documents in the same order, and the same scores up to float noise: a document encoded again
    (a rebuild, another replica's batch) may differ from its first encoding by ~1e-6."""
    assert [[doc_id for doc_id, _ in row] for row in found] == [[doc_id for doc_id, _ in row] for row in expected]
    assert [[score for _, score in row] for row in found] == [
        pytest.approx([score for _, score in row], abs=1e-5) for row in expected
    ]

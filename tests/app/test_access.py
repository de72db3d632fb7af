"""Who may do what: API keys on every route, and what a client may name as a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_service

OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}


def _concrete(path: str) -> str:
    return path.replace("{doc_id}", "some-doc").replace("{job_id}", "some-job").replace("{version}", "some-version")


def test_keys_guard_every_route_that_returns_data(make_settings: Any) -> None:
    """Walks every route of the app, so a new route is checked without editing this test."""
    settings = make_settings(api_key="write-key", search_api_key="search-key")
    with running_service(settings) as service:
        write, search = {"Authorization": "Bearer write-key"}, {"Authorization": "Bearer search-key"}
        paths = service.client.get("/openapi.json").json()["paths"]
        checked = 0
        for template, operations in paths.items():
            for method in operations:
                if template in OPEN_PATHS or template.endswith("/events"):
                    continue
                path = _concrete(template)
                anonymous = service.client.request(method, path)
                assert anonymous.status_code == 401, (method, path, anonymous.text)
                assert anonymous.headers["www-authenticate"] == "Bearer"
                wrong = service.client.request(method, path, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401, (method, path)
                assert service.client.request(method, path, headers=write).status_code != 401, (method, path)
                checked += 1
        assert checked >= 15
        # The search key reads, the write key reads and writes.
        for path in ("/index/stats", "/jobs", "/models", "/datasets", "/index/some-doc"):
            assert service.client.get(path, headers=search).status_code != 401, path
        assert service.client.post("/index/delete", json={"ids": ["x"]}, headers=search).status_code == 401
        assert service.client.post("/search", json={"query": "x"}, headers=search).status_code == 200
        events = service.client.get("/jobs/some-job/events")
        assert events.status_code == 401
        for path in ("/healthz", "/readyz", "/metrics"):
            assert service.client.get(path).status_code == 200, path
        schemes = service.client.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(s.get("scheme") == "bearer" for s in schemes.values())


def test_a_client_named_base_is_never_read_as_a_local_folder(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from xling.models.resolve import ModelNotFoundError, resolve_model
    from xling.worker.runner import JobContext

    shutil.copytree(tiny_model, tmp_path / "tmp" / "rel")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tmp/rel", None).origin == "folder"  # the operator's setting may be a folder
    with pytest.raises(ModelNotFoundError, match="hub"):
        resolve_model("tmp/rel", None, allow_folder=False)
    assert JobContext.folder_allowed("active") and not JobContext.folder_allowed("tmp/rel")

"""The API description matches the service: a bounded schemathesis run with every check passes.

Runs the `schemathesis` command (settings and documented exceptions in schemathesis.toml) against a
real service with both keys set, so the authentication checks run too. The SSE stream is left out:
it stays open by design.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import running_service

ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_all_checks_pass(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(api_key="write-key", search_api_key="search-key", key_prefix="contract")
    with running_service(settings) as service:
        service.index([{"id": "known", "text": "the cat sleeps", "lang": "en", "metadata": {"k": "v"}}])
        command = [
            str(Path(sys.executable).with_name("schemathesis")), "run", f"{service.url}/openapi.json",
            "--checks", "all", "--max-examples", "15", "--seed", "7", "--workers", "1",
            "--exclude-path-regex", "/events$", "-H", "Authorization: Bearer write-key",
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or " passed" in result.stdout, report

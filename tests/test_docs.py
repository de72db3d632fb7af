"""The documentation as a reader meets it: the site builds with --strict (no broken link, anchor or page), the
configuration page names every setting, and every command of the README and of the getting-started page runs
against a service started as the quick start starts it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.served import serving
from xling.state.settings import SECTIONS, Settings
from xling.state.settings_reference import CLIENT_VARIABLES, documented_variables, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES_WITH_COMMANDS = ("README.md", "docs/getting-started.md")
INSTALL = "python3 -m venv .venv && .venv/bin/pip install"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


def ci_command() -> str:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith(INSTALL)]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    configuration = (tmp_path / "site" / "configuration" / "index.html").read_text()
    for name in documented_variables():
        assert name in configuration, name
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "/index/applied" in api and "/v1/embeddings" in api  # rendered from the service's own description


def test_the_configuration_reference_names_and_describes_every_setting() -> None:
    page = reference_markdown()
    assert set(Settings.model_fields) == {name for section in SECTIONS for name in section.model_fields}
    for name, info in Settings.model_fields.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `XLING_{name.upper()}` |"))
        assert info.description, f"XLING_{name.upper()} has no description for the reference"
        assert info.description.split("`")[0][:20] in row
    for name, *_ in CLIENT_VARIABLES:
        assert f"| `{name}` |" in page


def test_the_quick_start_is_what_ci_runs() -> None:
    readme = bash_blocks("README.md")[0]
    commands = [line for line in readme.splitlines() if line.startswith(INSTALL)]
    assert commands[1] == ci_command()
    assert commands[0].endswith("&& .venv/bin/xling serve")
    assert commands[0] in bash_blocks("docs/getting-started.md")[0]  # the same install on both pages


def runnable(block: str, url: str) -> str:
    """A block as the test runs it: install lines left to .ci/run, the service's address for the quick start's."""
    lines = [line for line in block.splitlines() if not line.startswith(INSTALL)]
    text = "\n".join(lines)
    for address in ("http://127.0.0.1:8000", "localhost:8000", "127.0.0.1:8000"):
        text = text.replace(address, url)
    return text


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS)
def test_every_command_on_the_page_runs(page: str, tmp_path: Path, tiny_model: Path) -> None:
    xling = Path(sys.executable).parent / "xling"  # the console script the quick start runs
    work = tmp_path / "work"
    work.mkdir()
    with serving(tmp_path / "data", tiny_model, [str(xling)]) as (url, _, env):
        script = "\n".join(
            ["set -euo pipefail",
             # An HTTP error fails the script, with the body printed: `curl -s` alone would exit 0.
             'curl() { command curl --fail-with-body --show-error "$@"; echo; }',
             f"export XLING_URL={shlex.quote(url)}"]
            + [runnable(block, url) for block in bash_blocks(page)]
        )
        ran = subprocess.run(
            ["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
            env={**env, "PATH": f"{xling.parent}{os.pathsep}{env['PATH']}"},
        )
        assert ran.returncode == 0, f"{page}:\n{ran.stdout[-4000:]}\n{ran.stderr[-4000:]}"
        if page == "docs/getting-started.md":
            # The page promises the lexical search finds the two documents with the code.
            hits = httpx.get(f"{url}/search", params={"q": "XK-4471", "mode": "lexical"}).json()["hits"]
            assert {hit["id"] for hit in hits} == {"en-2", "de-2"}
        jobs = httpx.get(f"{url}/jobs").json()
        assert any(job["type"] == "finetune" for job in jobs["data"]), jobs  # the tuning example was queued

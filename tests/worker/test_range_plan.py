"""Which model a helper of a spread reindex encodes with: the coordinator's folder where this machine sees the
same path, else the same version found here by name; never another version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from xling.state.settings import Settings
from xling.worker.reindex import RangePlan, plan_source


def plan(source_path: Path, version: str, name: str) -> RangePlan:
    return RangePlan("job1", version, str(source_path), name, "0-0", [1], centred=False)


def test_a_helper_uses_the_coordinators_folder_or_the_same_version_by_name(
    tiny_model: Path, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")  # type: ignore[call-arg]
    shutil.copytree(tiny_model, settings.models_dir / "v7")
    # The coordinator's path exists here (a shared data folder): used as it is.
    same = plan_source(plan(settings.models_dir / "v7", "v7", "v7"), settings)
    assert same.path == settings.models_dir / "v7" and same.version == "v7"
    # Its path is not on this machine (another host's cache): the registry here has the version under that name.
    elsewhere = plan_source(plan(Path("/nowhere/on/this/host"), "v7", "v7"), settings)
    assert elsewhere.path == settings.models_dir / "v7" and elsewhere.origin == "registry"
    # The name leads to a different version here: refused rather than encoding ranges that would not match.
    shutil.copytree(tiny_model, tmp_path / "other-model")
    with pytest.raises(RuntimeError, match="not v7"):
        plan_source(plan(Path("/nowhere/on/this/host"), "v7", str(tmp_path / "other-model")), settings)

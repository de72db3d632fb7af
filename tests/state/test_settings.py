"""The settings in sections: each setting in exactly one, read from the same flat XLING_* variable as ever."""

from __future__ import annotations

import pytest

from xling.state.settings import SECTIONS, Settings


def test_every_setting_is_in_exactly_one_section() -> None:
    owners: dict[str, list[str]] = {}
    for section in SECTIONS:
        for name in section.model_fields:
            owners.setdefault(name, []).append(section.__name__)
    assert set(owners) == set(Settings.model_fields)
    assert all(len(found) == 1 for found in owners.values()), {n: f for n, f in owners.items() if len(f) > 1}
    assert all(section.__doc__ for section in SECTIONS)  # what the configuration reference says of each


def test_a_section_setting_reads_its_flat_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLING_CENTERING_MIN_DOCS", "7")
    monkeypatch.setenv("XLING_HNSW_M", "16")
    monkeypatch.setenv("XLING_LOG_JSON", "false")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.centering_min_docs, settings.hnsw_m, settings.log_json) == (7, 16, False)
    monkeypatch.setenv("XLING_HEARTBEAT_TIMEOUT_S", "1")  # a rule across sections still holds
    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        Settings(_env_file=None)  # type: ignore[call-arg]

"""Uploaded datasets: a job is checked against what the upload stored, and that agrees with reading the data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.synthetic import make_groups
from xling.models.data.parallel import check_shape, check_strategy
from xling.models.data.text import DataError
from xling.models.data.training_data import load_training_data
from xling.state.datasets import UnpackLimits, dataset_info, dataset_path, save_dataset, training_shape

LIMITS = UnpackLimits(max_bytes=8 * 1024 * 1024, max_ratio=100)


def save_jsonl(folder: Path, name: str, rows: list[dict]) -> None:
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    save_dataset(folder, name, f"{name}.jsonl", io.BytesIO(body), LIMITS)


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets"
    save_jsonl(folder, "multi", make_groups(20, seed=1))
    save_jsonl(folder, "english", make_groups(10, seed=2, langs=["en"]))
    save_jsonl(folder, "pairs", [{"src": f"cat {i}", "tgt": f"Katze {i}", "src_lang": "en", "tgt_lang": "de"}
                                 for i in range(5)])
    return folder


def refusal(check: object, *args: object) -> str | None:
    try:
        check(*args)  # type: ignore[operator]
    except DataError as exc:
        return str(exc)
    return None


COMBINATIONS = [["multi"], ["english"], ["pairs"], ["multi", "pairs"], ["english", "pairs"]]
STRATEGIES = [("monolingual", 0.5), ("crosslingual", 0.5), ("hybrid", 0.5), ("hybrid", 0.0), ("hybrid", 1.0)]


@pytest.mark.parametrize("names", COMBINATIONS, ids=["+".join(n) for n in COMBINATIONS])
def test_the_stored_summaries_refuse_exactly_what_the_data_would(datasets: Path, names: list[str]) -> None:
    groups, _ = load_training_data([dataset_path(datasets, name) for name in names])  # type: ignore[misc]
    shape = training_shape([dataset_info(datasets, name) for name in names])  # type: ignore[misc]
    for strategy, alpha in STRATEGIES:
        from_data = refusal(check_strategy, groups, strategy, alpha)
        from_summary = refusal(check_shape, shape, strategy, alpha)
        assert (from_data is None) == (from_summary is None), (strategy, alpha, from_data, from_summary)
        if from_data is not None:
            assert from_summary == from_data


def test_a_dataset_without_an_upload_record_is_not_a_dataset(datasets: Path) -> None:
    (datasets / "placed-by-hand").mkdir()
    assert dataset_info(datasets, "placed-by-hand") is None and dataset_path(datasets, "placed-by-hand") is None
    assert dataset_info(datasets, "multi")["kind"] == "qa"  # type: ignore[index]
    assert dataset_info(datasets, "pairs")["kind"] == "bitext"  # type: ignore[index]

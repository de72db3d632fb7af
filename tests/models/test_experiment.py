"""`xling evaluate` and `xling experiment` end to end on a tiny model and synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_xling
from tests.synthetic import make_groups, vocabulary_texts, write_jsonl, write_lareqa
from tests.tiny_model import build_tiny_model
from xling.models.data.text import DataError
from xling.models.experiment import ExperimentSpec, run_experiment
from xling.models.training.config import TrainConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experiment")
    evaluation = make_groups(25, seed=9)
    for group in evaluation:
        group["id"] = f"eval-{group['id']}"  # evaluation questions are never training questions
    return {
        "model": build_tiny_model(root / "tiny", extra_texts=vocabulary_texts()),
        "train": write_jsonl(root / "train.jsonl", make_groups(80, seed=1)),
        "eval": write_lareqa(root / "evalset", evaluation),
        "root": root,
    }


def test_experiment_report_seeds_and_resume(setup: dict[str, Path]) -> None:
    out = setup["root"] / "report"
    config = TrainConfig(batch_size=8, learning_rate=5e-3, max_length=32, val_fraction=0.0, warmup_ratio=0.0)
    spec = ExperimentSpec(
        train=setup["train"], evals=[setup["eval"]], base=str(setup["model"]), steps=4, seeds=[3, 4], config=config
    )
    record = run_experiment(spec, out, command="xling experiment (test)")
    assert [row["label"] for row in record["rows"]] == ["base", "X-X-mono", "X-Y", "hybrid"]
    for row in record["rows"]:
        assert set(row["sets"]["evalset"]) >= {"mono_map", "cross_map", "multi_map", "rank_distance"}
    runs = record["runs"][1:]
    assert sorted((r["label"], r["seed"]) for r in runs) == sorted(
        (label, seed) for label in ("X-X-mono", "X-Y", "hybrid") for seed in (3, 4)
    )
    assert {r["config"]["strategy"] for r in runs} == {"monolingual", "crosslingual", "hybrid"}
    assert all(r["config"]["max_steps"] == 4 for r in runs)
    # mean and sample std are those of the per-seed runs
    mono = [r["sets"]["evalset"]["mono_map"] for r in runs if r["label"] == "X-Y"]
    stats = record["summary"]["X-Y"]["evalset"]["mono_map"]
    assert stats["n"] == 2 and abs(stats["mean"] - sum(mono) / 2) < 1e-12
    assert abs(stats["std"] - abs(mono[0] - mono[1]) / 2**0.5) < 1e-12
    by = {(r["label"], r["seed"]): r["sets"]["evalset"] for r in runs}
    diff = record["differences"]["4"]["hybrid − X-Y"]["evalset"]["cross_map"]
    assert abs(diff - (by[("hybrid", 4)]["cross_map"] - by[("X-Y", 4)]["cross_map"])) < 1e-12
    assert record["data"]["train"]["fingerprint"].startswith("sha256:")
    assert "torch" in record["versions"] and record["command"] == "xling experiment (test)"
    markdown = (out / "experiment.md").read_text()
    assert "±" in markdown and "**" in markdown and "| 4 | hybrid − X-Y |" in markdown
    assert (out / "experiment.png").stat().st_size > 0
    assert not (out / "models" / "hybrid-seed3" / "model").exists()  # weights only when asked
    assert (out / "models" / "hybrid-seed3" / "report.json").exists()

    # A re-run with the same arguments trains nothing again; one more seed trains only that seed.
    marker = (out / "runs" / "X-Y-seed3.json").stat().st_mtime_ns
    seen: list[str] = []
    spec.seeds = [3, 4, 5]
    record = run_experiment(spec, out, progress=seen.append)
    assert [s for s in seen if s.startswith("training")] == [
        "training X-X-mono-seed5 (4 steps)",
        "training X-Y-seed5 (4 steps)",
        "training hybrid-seed5 (4 steps)",
    ]
    assert (out / "runs" / "X-Y-seed3.json").stat().st_mtime_ns == marker
    assert record["summary"]["hybrid"]["evalset"]["multi_map"]["n"] == 3

    # A report of what has finished, training nothing: here seeds 3 and 4 of 3, 4, 6.
    spec.seeds, spec.report_only = [3, 4, 6], True
    seen.clear()
    partial = run_experiment(spec, out, progress=seen.append)
    assert not [s for s in seen if s.startswith("training")] and partial["complete"] is False
    assert partial["summary"]["hybrid"]["evalset"]["multi_map"]["n"] == 2
    assert "**Partial**: 6 of 9 runs finished" in (out / "experiment.md").read_text()
    spec.seeds, spec.report_only = [3, 4, 5], False

    # Other arguments are refused instead of mixed into the same report.
    spec.steps = 5
    with pytest.raises(ValueError, match="steps"):
        run_experiment(spec, out)


def test_experiment_centred_rows_and_interpolation(setup: dict[str, Path]) -> None:
    out = setup["root"] / "wise"
    config = TrainConfig(batch_size=8, learning_rate=5e-3, max_length=32, val_fraction=0.2, warmup_ratio=0.0,
                         interpolation_weights=[0.5, 1.0])
    spec = ExperimentSpec(train=setup["train"], evals=[setup["eval"]], base=str(setup["model"]), steps=3, seeds=[0],
                          config=config, centering=True, interpolate=True)
    record = run_experiment(spec, out)
    labels = [row["label"] for row in record["rows"]]
    assert labels == ["base", "base, centred", "X-X-mono", "X-X-mono, centred", "X-Y", "X-Y, centred",
                      "hybrid", "hybrid, centred", "hybrid + WiSE-FT", "hybrid + WiSE-FT, centred"]
    assert record["complete"] is True
    rows = {row["label"]: row["sets"]["evalset"] for row in record["rows"]}
    assert rows["base, centred"] != rows["base"]  # centring changed the scores
    wise = next(run for run in record["runs"] if run["label"] == "hybrid + WiSE-FT")
    weight = wise["interpolation"]["weight"]
    assert [t["weight"] for t in wise["interpolation"]["trials"]] == [0.5, 1.0]
    if weight == 1.0:  # the interpolated model is hybrid's own weights: same scores
        assert rows["hybrid + WiSE-FT"] == rows["hybrid"]
    diff = record["differences"]["0"]["hybrid + WiSE-FT, centred − hybrid, centred"]["evalset"]["multi_map"]
    assert diff == pytest.approx(rows["hybrid + WiSE-FT, centred"]["multi_map"] - rows["hybrid, centred"]["multi_map"])
    markdown = (out / "experiment.md").read_text()
    assert "| hybrid + WiSE-FT, centred |" in markdown and f"seed 0: {weight:g}" in markdown
    assert not (out / "models" / "hybrid-seed0" / "model").exists()  # hybrid's weights go once interpolated
    with pytest.raises(ValueError, match="validation split"):
        run_experiment(ExperimentSpec(train=setup["train"], evals=[setup["eval"]], base=str(setup["model"]), steps=1,
                                      config=TrainConfig(val_fraction=0.0), interpolate=True), out / "never")


def test_experiment_refuses_to_train_on_evaluation_data(setup: dict[str, Path], tmp_path: Path) -> None:
    leaking = write_lareqa(tmp_path / "leak", make_groups(10, seed=1))  # same ids as the training groups
    spec = ExperimentSpec(train=setup["train"], evals=[leaking], base=str(setup["model"]), steps=1)
    with pytest.raises(DataError, match="question ids of .* are in the training data"):
        run_experiment(spec, tmp_path / "out")
    spec = ExperimentSpec(train=setup["eval"], evals=[setup["eval"]], base=str(setup["model"]), steps=1)
    with pytest.raises(DataError, match="both training and evaluation data"):
        run_experiment(spec, tmp_path / "out")


def test_cli_evaluate(setup: dict[str, Path], tmp_path: Path) -> None:
    bitext = tmp_path / "bitext"
    bitext.mkdir()
    (bitext / "t.deu-eng.deu").write_text("de01w de02w\nde03w de04w\n")
    (bitext / "t.deu-eng.eng").write_text("en01w en02w\nen03w en04w\n")
    result = run_xling(
        "evaluate", "--model", str(setup["model"]), "--lareqa", str(setup["eval"]), "--bitext", str(bitext),
        "--out", str(tmp_path / "report"), "--centering",
    )
    assert result.returncode == 0, result.stderr
    assert "Mono mAP" in result.stdout and "evalset" in result.stdout and "bitext accuracy@1" in result.stdout
    assert "evalset, centred" in result.stdout  # --centering adds a row per LAReQA set
    assert (tmp_path / "report" / "heatmap_evalset.png").exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["lareqa"][0]["metrics"]["multi_map"] > 0
    assert report["lareqa"][0]["centred"]["metrics"]["multi_map"] > 0
    assert "| evalset, centred |" in (tmp_path / "report" / "report.md").read_text()
    assert "bitext accuracy@1 (macro, both directions):" in result.stdout and "(centred " in result.stdout
    bitext_report = report["bitext"][0]
    assert bitext_report["centred"]["bitext_acc@1"] == pytest.approx(
        sum(row["mean"] for row in bitext_report["centred"]["pairs"]) / len(bitext_report["centred"]["pairs"])
    )
    assert "centred mean |" in (tmp_path / "report" / "report.md").read_text()

    missing = run_xling("evaluate", "--model", str(setup["model"]), "--lareqa", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no <lang>.json files" in missing.stderr


def test_cli_experiment_and_finetune_errors(setup: dict[str, Path], tmp_path: Path) -> None:
    bitext = tmp_path / "rare"
    bitext.mkdir()
    (bitext / "t.de-es.de").write_text("de01w de02w\nde03w de04w\nde05w de06w\n")
    (bitext / "t.de-es.es").write_text("es01w es02w\nes03w es04w\nes05w es06w\n")
    result = run_xling(
        "experiment", "--train", str(setup["train"]), "--eval", str(setup["eval"]), "--eval", str(bitext),
        "--base", str(setup["model"]), "--steps", "2", "--batch-size", "8", "--max-length", "32",
        "--out", str(tmp_path / "exp"),
    )
    assert result.returncode == 0, result.stderr
    assert "X-X-mono" in result.stdout and "hybrid" in result.stdout and "bitext accuracy@1" in result.stdout
    markdown = (tmp_path / "exp" / "experiment.md").read_text()
    assert "rare acc@1" in markdown and "evalset Multi mAP" in markdown
    record = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert set(record["summary"]["hybrid"]["rare"]) == {"bitext_acc@1"}

    leaking = tmp_path / "leak"
    leaking.mkdir()
    first = json.loads(setup["train"].read_text().splitlines()[0])
    (leaking / "t.de-en.de").write_text(first["query"]["de"] + "\n")
    (leaking / "t.de-en.en").write_text(first["query"]["en"] + "\n")
    refused = run_xling(
        "experiment", "--train", str(setup["train"]), "--eval", str(leaking), "--base", str(setup["model"]),
        "--steps", "1", "--out", str(tmp_path / "never-exp"),
    )
    assert refused.returncode == 2 and "sentences of" in refused.stderr and "are in the training data" in refused.stderr

    one_language = write_jsonl(tmp_path / "en.jsonl", make_groups(10, seed=0, langs=["en"]))
    refused = run_xling(
        "finetune", "--data", str(one_language), "--strategy", "crosslingual", "--base", str(setup["model"]),
        "--out", str(tmp_path / "never"),
    )
    assert refused.returncode == 2 and "at least two languages" in refused.stderr
    assert not (tmp_path / "never").exists()
    for flags, reason in ((["--mixing", "train=lots"], "NAME=SHARE"),
                          (["--bitext-passes", "3", "--max-steps", "5"], "not both")):
        refused = run_xling("finetune", "--data", str(setup["train"]), "--base", str(setup["model"]),
                            "--out", str(tmp_path / "never"), *flags)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
    assert not (tmp_path / "never").exists()

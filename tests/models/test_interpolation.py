"""WiSE-FT interpolation and guards: exact ends, the weight chosen under guards, the manifest's record, and
the deploy decision that guards make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.models.test_bitext_reports import make_parallel_groups
from tests.synthetic import make_groups, smooth_fake_encoder, vocabulary_texts, write_jsonl
from tests.tiny_model import build_tiny_model
from xling.models.data.parallel import ParallelGroup
from xling.models.encoder import Encoder
from xling.models.evaluation.decision import deploy_decision
from xling.models.evaluation.evaluate import BitextEvaluation, EvaluationReport, LareqaEvaluation
from xling.models.evaluation.guards import Guard, check_guards, default_guards
from xling.models.evaluation.lareqa import LareqaResult
from xling.models.evaluation.validation import validation_metrics, validation_objective, validation_tie_break
from xling.models.training.config import TrainConfig
from xling.models.training.interpolate import choose_weight, interpolate_state, write_interpolated
from xling.models.training.trainer import finetune

TEXTS = [g["query"]["de"] for g in make_groups(12, seed=3)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("wise")
    base = build_tiny_model(root / "base", extra_texts=vocabulary_texts())
    data = write_jsonl(root / "groups.jsonl", make_groups(60, seed=0))
    config = TrainConfig(batch_size=8, max_steps=6, learning_rate=5e-3, max_length=32, val_fraction=0.0,
                         warmup_ratio=0.0)
    tuned = finetune(str(base), data, root / "tuned", config).path
    assert tuned is not None
    return base, tuned, data


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_ends_reproduce_base_and_tuned_exactly(models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, tuned, _ = models
    at_zero = write_interpolated(base, tuned, tmp_path / "zero", 0.0)
    at_one = write_interpolated(base, tuned, tmp_path / "one", 1.0)
    base_w, tuned_w = _weights(base), _weights(tuned)
    assert any(not torch.equal(base_w[k], tuned_w[k]) for k in base_w)  # training moved something
    assert all(torch.equal(_weights(at_zero)[k], base_w[k]) for k in base_w)
    assert all(torch.equal(_weights(at_one)[k], tuned_w[k]) for k in tuned_w)
    # Served, λ = 1 is the tuned model bit for bit; λ = 0 is the base's weights under the tuned folder's prefixes.
    one, tuned_enc = Encoder(at_one, version="a", device="cpu"), Encoder(tuned, version="b", device="cpu")
    assert np.array_equal(one.encode(TEXTS, "query"), tuned_enc.encode(TEXTS, "query"))
    zero, base_enc = Encoder(at_zero, version="c", device="cpu"), Encoder(base, version="d", device="cpu")
    prefixed = [zero.passage_prefix + text for text in TEXTS]
    assert zero.passage_prefix and not base_enc.passage_prefix
    assert np.array_equal(zero.encode(TEXTS, "passage"), base_enc.encode(prefixed, "passage"))
    half = interpolate_state(base_w, tuned_w, 0.5)
    name = next(k for k in base_w if not torch.equal(base_w[k], tuned_w[k]))
    assert torch.allclose(half[name], (base_w[name] + tuned_w[name]) / 2)


def test_mismatched_models_are_refused() -> None:
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_state({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_state({"a": torch.zeros(2)}, {"a": torch.zeros(2)}, 1.5)


def test_guards_compare_both_ways_and_refuse_unmeasured_metrics() -> None:
    base = {"xq:mono_map": 0.800, "xq:rank_distance": 100.0, "rare:bitext_acc@1": 0.3}
    better = {"xq:mono_map": 0.796, "xq:rank_distance": 100.004, "rare:bitext_acc@1": 0.5}
    worse = {"xq:mono_map": 0.790, "xq:rank_distance": 101.0, "rare:bitext_acc@1": 0.5}
    guards = [Guard("xq:mono_map"), Guard("xq:rank_distance", 0.005)]
    assert [c.passed for c in check_guards(guards, base, better)] == [True, True]
    checks = check_guards(guards, base, worse)
    assert [c.passed for c in checks] == [False, False]
    assert (checks[0].baseline, checks[0].candidate) == (0.800, 0.790)
    assert [g.metric for g in default_guards(base)] == ["rare:bitext_acc@1", "xq:mono_map"]
    with pytest.raises(ValueError, match="not measured"):
        check_guards([Guard("other:mono_map")], base, better)


def test_choose_weight_takes_the_best_objective_that_keeps_the_guards() -> None:
    def measure(weight: float) -> dict[str, float]:
        # Multi rises with the weight; Mono holds until 0.6, then falls past the bound.
        return {"val:multi_map": 0.3 + 0.2 * weight, "val:mono_map": 0.8 - (0.05 * weight if weight > 0.6 else 0.0)}

    choice = choose_weight(measure, "val:multi_map", [Guard("val:mono_map")])
    assert choice.weight == 0.6
    assert [t.passed for t in choice.trials] == [True, True, True, False, False]
    assert choice.to_dict()["trials"][3]["guards"][0]["candidate"] == pytest.approx(0.76)
    strict = choose_weight(measure, "val:multi_map", [Guard("val:multi_map", 0.0), Guard("val:mono_map", 0.0)],
                           weights=(0.8, 1.0))
    assert strict.weight == 0.0  # no weight kept every guard: the base
    with pytest.raises(ValueError, match="objective"):
        choose_weight(measure, "val:nothing", [])


def test_a_saturated_objective_is_decided_by_the_tie_break() -> None:
    def measure(weight: float) -> dict[str, float]:
        # Accuracy saturates from 0.4 up; the margin keeps rising until 0.8, then falls.
        accuracy = 0.9 if weight < 0.4 else 0.99
        return {"acc": accuracy, "margin": 0.1 + weight - (0.3 if weight == 1.0 else 0.0), "mono": 0.8}

    assert choose_weight(measure, "acc", [Guard("mono")]).weight == 0.4  # no tie-break: the smallest weight
    choice = choose_weight(measure, "acc", [Guard("mono")], tie_break="margin")
    assert choice.weight == 0.8 and choice.to_dict()["tie_break"] == "margin"
    # the objective still comes first: a higher margin never buys a lower accuracy
    assert choose_weight(lambda w: {"acc": 1.0 - w / 10, "margin": w}, "acc", [], tie_break="margin").weight == 0.0
    with pytest.raises(ValueError, match="not measured"):
        choose_weight(measure, "acc", [], tie_break="nothing")


def test_validation_on_bitext_breaks_ties_on_the_margin() -> None:
    lines = [{"kzj": f"kzword{i}", "en": f"enword{i}"} for i in range(6)]
    groups = [ParallelGroup(f"tatoeba.kzj-en#{i}", line, line, cross_only=True) for i, line in enumerate(lines)]
    metrics = validation_metrics(smooth_fake_encoder, groups, centering=False)
    assert validation_objective(groups) in metrics and validation_tie_break(groups) in metrics
    assert 0 < metrics["val-bitext:bitext_margin"] <= 2  # a line and its translation share a word
    assert validation_tie_break([g for g in make_parallel_groups()]) is None  # QA Multi mAP does not saturate so


def test_finetune_interpolates_and_records_the_choice(models: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _, data = models
    config = TrainConfig(batch_size=8, max_steps=6, learning_rate=5e-3, max_length=32, val_fraction=0.25,
                         warmup_ratio=0.0, interpolate=True, interpolation_weights=[0.5, 1.0])
    result = finetune(str(base), data, tmp_path / "wise", config)
    assert result.path is not None
    record = json.loads((result.path / "xling.json").read_text())["training"]["interpolation"]
    assert record["method"] == "wise-ft" and record["objective"] == "val:multi_map"
    assert [t["weight"] for t in record["trials"]] == [0.5, 1.0]
    assert all(t["guards"][0]["metric"] == "val:mono_map" for t in record["trials"])
    assert record["weight"] in (0.0, 0.5, 1.0) and result.metrics["interpolation_weight"] == record["weight"]
    best = max((t for t in record["trials"] if t["passed"]), key=lambda t: t["metrics"]["val:multi_map"], default=None)
    if best is None or best["metrics"]["val:multi_map"] <= record["base_metrics"]["val:multi_map"]:
        assert record["weight"] == 0.0
    else:
        assert record["weight"] == best["weight"]
    assert not any(p.name.endswith(".interpolating") for p in tmp_path.iterdir())
    if record["weight"] == 0.0:
        assert all(torch.equal(_weights(result.path)[k], v) for k, v in _weights(base).items())
    with pytest.raises(ValueError, match="validation split"):
        TrainConfig(interpolate=True, val_fraction=0.0)


def _report(version: str, multi: float, mono: float, accuracy: float) -> EvaluationReport:
    metrics = {"mono_map": mono, "cross_map": 0.5, "multi_map": multi, "rank_distance": 10.0}
    result = LareqaResult(metrics=metrics, pair_map={}, per_language={})
    report = EvaluationReport(version, [LareqaEvaluation("xq", "", result, 0.0, 0.0, centred=result)])
    report.bitext.append(BitextEvaluation("rare", {"bitext_acc@1": accuracy, "centred": {"bitext_acc@1": accuracy}}))
    return report


def test_a_candidate_better_on_compare_on_that_breaks_a_guard_is_not_deployed() -> None:
    active = _report("a", multi=0.50, mono=0.80, accuracy=0.30)
    gains_rare_loses_mono = _report("b", multi=0.55, mono=0.78, accuracy=0.60)
    decision = deploy_decision(gains_rare_loses_mono, active, "rare", None, centred=True)
    assert decision["candidate"] == 0.60 and decision["active"] == 0.30 and decision["deployed"] is False
    mono = next(g for g in decision["guards"] if g["metric"] == "xq:mono_map")
    assert (mono["baseline"], mono["candidate"], mono["passed"]) == (0.80, 0.78, False)
    assert "a guard fell: xq:mono_map 0.8000 -> 0.7800" in decision["reason"]
    # Within the bound, the same gain deploys; without guards, even the Mono loss does.
    keeps_mono = _report("c", multi=0.55, mono=0.797, accuracy=0.60)
    assert deploy_decision(keeps_mono, active, "rare", None, centred=True)["deployed"] is True
    assert deploy_decision(gains_rare_loses_mono, active, "rare", [], centred=False)["deployed"] is True
    worse = deploy_decision(active, gains_rare_loses_mono, None, None, centred=True)
    assert worse["deployed"] is False and worse["reason"].startswith("not better on multi_map")

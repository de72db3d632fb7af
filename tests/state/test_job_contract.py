"""The typed job contract: what the api stores is what the worker parses, per job kind."""

from __future__ import annotations

import pytest

from xling.models.training.config import TrainConfig
from xling.state.jobs import (
    JOB_SPECS,
    EvaluateJob,
    ExperimentConfig,
    ExperimentJob,
    FinetuneJob,
    ReindexJob,
    parse_job,
    task_name,
)

SPECS = [
    FinetuneJob(dataset=["qa"], config=TrainConfig(batch_size=8), eval_datasets=["ev"], deploy="if_better",
                compare_on="ev", version="ft-1"),
    EvaluateJob(model="v1", datasets=["ev", "bitext"]),
    ExperimentJob(train_dataset=["qa"], eval_datasets=["ev"], steps=5, seeds=[0, 1],
                  config=ExperimentConfig(batch_size=8)),
    ReindexJob(version="v2"),
]


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_a_stored_job_parses_back_to_the_same_spec(spec: object) -> None:
    assert isinstance(spec, tuple(JOB_SPECS.values()))
    assert parse_job(spec.kind, spec.params()) == spec  # type: ignore[attr-defined]
    assert task_name(spec.kind) == f"xling.{spec.kind}"  # type: ignore[attr-defined]


def test_stored_parameters_keep_their_shape() -> None:
    finetune = SPECS[0].params()
    assert finetune["dataset"] == ["qa"] and finetune["config"] == TrainConfig(batch_size=8).model_dump()
    assert SPECS[1].params() == {"model": "v1", "datasets": ["ev", "bitext"], "centering": False, "mode": "dense"}
    # A job stored before a field existed still parses, with the field's default.
    assert parse_job("evaluate", {"model": "v1", "datasets": ["ev", "bitext"], "centering": False}) == SPECS[1]
    assert SPECS[3].params() == {"version": "v2", "recalibrate": False}


def test_what_a_job_uses_is_known_without_string_keys() -> None:
    assert SPECS[0].dataset_names() == {"qa", "ev"} and SPECS[0].model_names() == {"active", "ft-1"}
    assert SPECS[1].dataset_names() == {"ev", "bitext"} and SPECS[1].model_names() == {"v1"}
    assert SPECS[2].dataset_names() == {"qa", "ev"} and SPECS[2].model_names() == {"active"}
    assert SPECS[3].dataset_names() == set() and SPECS[3].model_names() == {"v2"}


def test_one_dataset_given_as_a_string_is_a_list_of_one() -> None:
    job = parse_job("finetune", {"dataset": "qa", "config": {}, "version": "v"})
    assert isinstance(job, FinetuneJob) and job.dataset == ["qa"] and job.config == TrainConfig()


def test_an_unknown_kind_or_a_malformed_job_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown job type"):
        parse_job("compress", {})
    with pytest.raises(ValueError):
        parse_job("reindex", {})


# The CLI's option names where they differ from the contract's field names.
CLI_NAMES = {"lr": "learning_rate", "patience": "early_stopping_patience", "grad_accum": "gradient_accumulation_steps"}


def test_every_other_surface_defaults_as_the_contract_does() -> None:
    """The training parameters are declared once (TrainConfig); the finetune request inherits them, and the CLI
    and the experiment request, which must spell them as options or fields of their own, start from the same
    defaults (experiments hold no validation split unless asked: their own choice, checked as such)."""
    import inspect

    from xling.app.schemas import ExperimentRequest, FinetuneRequest
    from xling.cli.offline import finetune

    contract = TrainConfig()
    assert set(TrainConfig.model_fields) <= set(FinetuneRequest.model_fields)
    options = inspect.signature(finetune).parameters
    compared = 0
    for option, parameter in options.items():
        name = CLI_NAMES.get(option, option)
        if name in TrainConfig.model_fields and parameter.default is not inspect.Parameter.empty:
            expected = getattr(contract, name)
            assert parameter.default == expected, (option, parameter.default, expected)
            compared += 1
    assert compared >= 20
    for model in (ExperimentRequest, ExperimentConfig):
        shared = set(model.model_fields) & set(TrainConfig.model_fields) - {"val_fraction"}
        assert shared and all(model.model_fields[n].default == getattr(contract, n) for n in shared), model
    assert ExperimentConfig().val_fraction == 0.0

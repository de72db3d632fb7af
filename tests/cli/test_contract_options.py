"""The training options of `xling finetune` and `xling experiment` come from the job contract (TrainConfig): the
same names, defaults and descriptions, and the values given arrive in the contract as given."""

from __future__ import annotations

import inspect
from typing import Any

import typer
from typer.testing import CliRunner

from xling.cli import offline
from xling.cli.contract_options import contract_options
from xling.models.training.config import TrainConfig


def test_a_command_offers_the_contract_fields_with_their_defaults_and_descriptions() -> None:
    received: dict[str, Any] = {}

    @contract_options(TrainConfig, ("alpha", "learning_rate", "max_steps", "strategy", "freeze_embeddings"),
                      {"learning_rate": ("--lr",)})
    def command(name: str = "x", *, contract: dict[str, Any]) -> None:
        received.update(contract, name=name)

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: typer then dispatches by name
    runner = CliRunner()
    shown = runner.invoke(app, ["command", "--help"], env={"COLUMNS": "200"}).output
    assert "probability that a batch is monolingual" in shown and "[default: 0.5]" in shown
    assert "--lr" in shown and "--learning-rate" not in shown and "--no-freeze-embeddings" in shown
    result = runner.invoke(app, ["command", "--lr", "0.001", "--max-steps", "7", "--strategy", "monolingual",
                                 "--freeze-embeddings", "--name", "y"])
    assert result.exit_code == 0, result.output
    assert received == {"alpha": 0.5, "learning_rate": 0.001, "max_steps": 7, "strategy": "monolingual",
                        "freeze_embeddings": True, "name": "y"}


def test_finetune_and_experiment_take_their_training_options_from_the_contract() -> None:
    fields = TrainConfig.model_fields
    for command, offered in ((offline.finetune, offline.FINETUNE_FIELDS),
                             (offline.experiment, offline.EXPERIMENT_FIELDS)):
        params = inspect.signature(command).parameters
        for name in offered:
            assert params[name].default == fields[name].default, name
            option = params[name].annotation.__metadata__[0]
            assert option.help == fields[name].description, name
        assert "contract" not in params  # filled by the decorator, not by the command line
    # Every scalar field a run is tuned with is on the command line (the rest: --mixing, or set per job).
    scalar = {name for name, field in fields.items() if field.default_factory is None and name != "mixing"}
    assert scalar - set(offline.FINETUNE_FIELDS) <= {"guard_max_drop", "centred_validation"}

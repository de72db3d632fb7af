"""Command-line options made from the job contract's fields (xling.models.training.config.TrainConfig): a field's
type, default and description are declared there once, and a command offers the fields it names as options
(`--field-name`, or the names given), so the CLI cannot drift from the request schema and the worker."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel

Command = TypeVar("Command", bound=Callable[..., Any])
CONTRACT = "contract"  # the keyword that receives the options' values, as {field: value}


def contract_options(model: type[BaseModel], fields: Sequence[str],
                     names: Mapping[str, Sequence[str]] | None = None) -> Callable[[Command], Command]:
    """Add to a typer command one option per named field of `model`; the command receives their values in its
    keyword-only parameter `contract` ({field: value}), which the command line does not show. `names`: option
    names for a field whose flag differs from `--field-name` (kept for commands people already type)."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)  # the annotations as objects: typer reads them
        own = [param for param in signature.parameters.values() if param.name != CONTRACT]
        added = [_option(model, field, (names or {}).get(field, ())) for field in fields]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **{CONTRACT: {field: kwargs.pop(field) for field in fields}}, **kwargs)

        run.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _option(model: type[BaseModel], field: str, flags: Sequence[str]) -> inspect.Parameter:
    info = model.model_fields[field]
    if info.default_factory is not None:
        raise ValueError(f"{field}: a field with a default factory needs an option of its own")
    option = typer.Option(*flags, help=info.description)
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=info.default,
                             annotation=Annotated[_cli_type(info.annotation), option])


def _cli_type(annotation: Any) -> Any:
    """What the command line parses a field as: a choice of literals as text (the contract checks the value), an
    optional field as its type (absent: the default)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if origin in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(kept) == 1:
            return _cli_type(kept[0]) | None
    if origin is Annotated:
        return _cli_type(get_args(annotation)[0])
    return annotation

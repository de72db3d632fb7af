"""Typed dependencies: routes reach the engine and settings through these, tests override them."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from app.engine import Engine
from app.errors import Unauthorized
from app.settings import Settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _check_bearer(request: Request, expected: SecretStr | None) -> None:
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken does not reveal how much of the key matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")


def require_write_key(request: Request, settings: SettingsDep) -> None:
    _check_bearer(request, settings.api_key)


def require_search_key(request: Request, settings: SettingsDep) -> None:
    _check_bearer(request, settings.search_api_key)

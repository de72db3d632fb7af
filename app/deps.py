"""Typed dependencies: routes reach the engine, its parts (registry, job store and queue, doc store, hot swap) and
the settings through these, and tests can override them."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from xling.serving.engine import Engine
from xling.serving.holds import LogHolds
from xling.serving.job_queue import JobQueue
from xling.serving.swap import HotSwap
from xling.state.docstore import DocStore
from xling.state.errors import Unauthorized
from xling.state.jobstore import JobStore
from xling.state.registry import Registry
from xling.state.settings import Settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(engine: Annotated[Engine, Depends(get_engine)]) -> Registry:
    return engine.registry


def get_job_store(engine: Annotated[Engine, Depends(get_engine)]) -> JobStore:
    return engine.jobs


def get_job_queue(engine: Annotated[Engine, Depends(get_engine)]) -> JobQueue:
    return engine.job_queue


def get_doc_store(engine: Annotated[Engine, Depends(get_engine)]) -> DocStore:
    return engine.docs


def get_swap(engine: Annotated[Engine, Depends(get_engine)]) -> HotSwap:
    return engine.swap


def get_holds(engine: Annotated[Engine, Depends(get_engine)]) -> LogHolds:
    return engine.holds


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
JobQueueDep = Annotated[JobQueue, Depends(get_job_queue)]
DocStoreDep = Annotated[DocStore, Depends(get_doc_store)]
SwapDep = Annotated[HotSwap, Depends(get_swap)]
HoldsDep = Annotated[LogHolds, Depends(get_holds)]


# One bearer scheme per guard, declared in the OpenAPI description (xling.app.openapi keeps only the guards
# that are set), so clients and generated SDKs see which key each route takes.
_KEYS_DOC = "XLING_API_KEY reads and writes; XLING_SEARCH_API_KEY searches and reads."
write_bearer = HTTPBearer(auto_error=False, scheme_name="writeKey", description="XLING_API_KEY")
search_bearer = HTTPBearer(auto_error=False, scheme_name="searchKey", description=f"either key. {_KEYS_DOC}")
read_bearer = HTTPBearer(auto_error=False, scheme_name="readKey", description=f"either key. {_KEYS_DOC}")
Credentials = HTTPAuthorizationCredentials | None


def _check_bearer(credentials: HTTPAuthorizationCredentials | None, accepted: list[SecretStr]) -> None:
    if not accepted:
        return
    token = credentials.credentials.encode() if credentials and credentials.scheme.lower() == "bearer" else b""
    # compare_digest: the time taken does not reveal how much of a key matched; every key is compared.
    matches = [hmac.compare_digest(token, key.get_secret_value().encode()) for key in accepted]
    if not any(matches):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")


def _keys(*keys: SecretStr | None) -> list[SecretStr]:
    return [key for key in keys if key is not None]


def require_write_key(credentials: Annotated[Credentials, Depends(write_bearer)], settings: SettingsDep) -> None:
    """Writes, uploads, jobs and activation: the write key, when it is set."""
    _check_bearer(credentials, _keys(settings.api_key))


def require_search_key(credentials: Annotated[Credentials, Depends(search_bearer)], settings: SettingsDep) -> None:
    """Search, embeddings and reading a document by id: the search key or the write key, when a search key is set."""
    if settings.search_api_key is not None:
        _check_bearer(credentials, _keys(settings.search_api_key, settings.api_key))


def require_read_key(credentials: Annotated[Credentials, Depends(read_bearer)], settings: SettingsDep) -> None:
    """Stored data and server details (stats, jobs, models, datasets, reports): either key, when any is set."""
    _check_bearer(credentials, _keys(settings.search_api_key, settings.api_key))

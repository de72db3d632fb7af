"""GET /models, GET /models/active, POST /models/{version}/activate (promotion and rollback)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse

from app.deps import EngineDep, require_read_key, require_write_key
from app.engine import Engine
from app.errors import Conflict, NotFound
from app.job_requests import models_of
from app.schemas import NAME_PATTERN, Activation, ActiveModel, ModelsPage
from models.vector_index import SNAPSHOT_META

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_read_key)])


@router.get("", response_model=ModelsPage)
def list_models(engine: EngineDep) -> ModelsPage:
    """Registered versions with their xling.json (metrics, training config), newest first, and the
    configured default model (marked `default`), which serves when no version is activated."""
    versions = engine.registry.versions()
    default = engine.default_version
    for entry in versions:
        entry["default"] = entry.get("version") == default
    if not any(entry["default"] for entry in versions):
        source = engine.default_source
        versions.append({"version": default, "default": True, "origin": source.origin, "name": source.name})
    activated = engine.registry.active()
    return ModelsPage(
        data=versions,
        count=len(versions),
        active=activated or default,
        activated=activated,
        rollback_target=_rollback_target(engine),
    )


def _rollback_target(engine: Engine) -> str | None:
    """What serving goes back to: the version before the last activation (the default if that was none)."""
    target = engine.registry.rollback_target()
    if target is None and engine.registry.active() is None:
        return None  # the default serves and nothing was ever activated: nothing to go back to
    return target or engine.default_version


@router.delete("/{version}", status_code=204, dependencies=[Depends(require_write_key)])
def delete_model(engine: EngineDep, version: str = Path(pattern=NAME_PATTERN)) -> Response:
    """Delete a registry version and its index snapshot. Refused (409) for the active version, the rollback
    target, the configured default, and a version a queued or running job uses."""
    if not engine.registry.has(version):
        raise NotFound(f"no registry version {version!r} (GET /models)")
    active = engine.registry.active() or engine.default_version
    protected = {active: "active", engine.default_version: "the configured default"}
    target = _rollback_target(engine)
    if target is not None:
        protected.setdefault(target, "the rollback target")
    if version in protected:
        raise Conflict(f"version {version!r} is {protected[version]}; activate another version first")
    users = [job.id for job in engine.jobs.unfinished() if version in models_of(job.params)]
    if users:
        raise Conflict(f"version {version!r} is used by queued or running job {users[0]}")
    engine.registry.delete(version, engine.settings.indexes_dir)
    return Response(status_code=204)


@router.get("/active", response_model=ActiveModel)
def active_model(engine: EngineDep) -> ActiveModel:
    pair = engine.require_pair()
    origin = engine.model_source.origin if engine.model_source else None
    return ActiveModel(
        version=pair.version, activated=engine.registry.active(), origin=origin, swap_error=engine.swap_error
    )


@router.post(
    "/{version}/activate",
    response_model=Activation,
    responses={202: {"model": Activation, "description": "re-encoding first, on the worker"}},
    dependencies=[Depends(require_write_key)],
)
def activate(engine: EngineDep, version: str = Path(pattern=NAME_PATTERN)) -> JSONResponse:
    """Serve `version` on every replica. With an index snapshot for it (e.g. a rollback), at once:
    each api replays the log from the snapshot's offset and swaps. Without one, a reindex job runs first."""
    default = engine.default_version
    if version == default:
        engine.registry.activate(None)  # back to the configured model
        return JSONResponse(Activation(version=version).model_dump())
    if not engine.registry.has(version):
        raise NotFound(f"no registry version {version!r} (GET /models)")
    if (engine.snapshot_dir(version) / SNAPSHOT_META).is_file():
        engine.registry.activate(version)
        return JSONResponse(Activation(version=version).model_dump())
    job = engine.submit_job("reindex", {"version": version})
    return JSONResponse(Activation(version=version, job_id=job.id).model_dump(), status_code=202)

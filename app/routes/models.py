"""GET /models, GET /models/active, GET /models/{version}, POST /models/{version}/activate (promotion and
rollback)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import JSONResponse

from xling.app.deps import (
    EngineDep,
    JobQueueDep,
    JobStoreDep,
    RegistryDep,
    SettingsDep,
    SwapDep,
    require_read_key,
    require_write_key,
)
from xling.app.schemas import NAME_PATTERN, Activation, ActiveModel, ModelsPage
from xling.serving.swap import HotSwap
from xling.state.centering import describe
from xling.state.errors import Conflict, NotFound
from xling.state.jobs import ReindexJob, parse_job
from xling.state.registry import Registry

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_read_key)])


@router.get("", response_model=ModelsPage)
def list_models(registry: RegistryDep, swap: SwapDep) -> ModelsPage:
    """Registered versions with their xling.json (metrics, training config), newest first, and the
    configured default model (marked `default`), which serves when no version is activated."""
    versions = registry.versions()
    default = swap.default_version
    for entry in versions:
        entry["default"] = entry.get("version") == default
    if not any(entry["default"] for entry in versions):
        source = swap.default_source
        versions.append({"version": default, "default": True, "origin": source.origin, "name": source.name})
    activated = registry.active()
    return ModelsPage(
        data=versions,
        count=len(versions),
        active=activated or default,
        activated=activated,
        rollback_target=_rollback_target(registry, swap),
    )


def _rollback_target(registry: Registry, swap: HotSwap) -> str | None:
    """What serving goes back to: the version before the last activation (the default if that was none)."""
    target = registry.rollback_target()
    if target is None and registry.active() is None:
        return None  # the default serves and nothing was ever activated: nothing to go back to
    return target or swap.default_version


@router.delete("/{version}", status_code=204, dependencies=[Depends(require_write_key)])
def delete_model(
    registry: RegistryDep,
    swap: SwapDep,
    jobs: JobStoreDep,
    settings: SettingsDep,
    version: str = Path(pattern=NAME_PATTERN),
) -> Response:
    """Delete a registry version and its index snapshot. Refused (409) for the active version, the rollback
    target, the configured default, and a version a queued or running job uses."""
    if not registry.has(version):
        raise NotFound(f"no registry version {version!r} (GET /models)")
    active = registry.active() or swap.default_version
    protected = {active: "active", swap.default_version: "the configured default"}
    target = _rollback_target(registry, swap)
    if target is not None:
        protected.setdefault(target, "the rollback target")
    if version in protected:
        raise Conflict(f"version {version!r} is {protected[version]}; activate another version first")
    users = [job.id for job in jobs.unfinished() if version in parse_job(job.type, job.params).model_names()]
    if users:
        raise Conflict(f"version {version!r} is used by queued or running job {users[0]}")
    registry.delete(version, settings.indexes_dir)
    return Response(status_code=204)


@router.get("/active", response_model=ActiveModel)
def active_model(engine: EngineDep, registry: RegistryDep, swap: SwapDep) -> ActiveModel:
    pair, source = engine.require_pair(), swap.source
    origin = source.origin if source else None
    centering = {**describe(pair.centering, swap.settings), **swap.centering_status()}
    if swap.settings.centering:
        centering["job"] = engine.calibration_job()
    return ActiveModel(
        version=pair.version, activated=registry.active(), origin=origin, swap_error=swap.error, centering=centering,
    )


@router.get("/{version}", response_model=dict[str, Any])
def get_model(registry: RegistryDep, swap: SwapDep, version: str = Path(pattern=NAME_PATTERN)) -> dict[str, Any]:
    """One registry version's xling.json: its base, training, metrics and language adapters (each with its
    languages, data, steps and accuracy on its held-out sets)."""
    manifest = registry.manifest(version)
    if manifest is None:
        raise NotFound(f"no registry version {version!r} (GET /models)")
    return {**manifest.to_dict(), "default": version == swap.default_version}


@router.post(
    "/{version}/activate",
    response_model=Activation,
    responses={202: {"model": Activation, "description": "re-encoding first, on the worker"}},
    dependencies=[Depends(require_write_key)],
)
def activate(
    registry: RegistryDep, swap: SwapDep, queue: JobQueueDep, version: str = Path(pattern=NAME_PATTERN)
) -> JSONResponse:
    """Serve `version` on every replica. With an index snapshot for it (e.g. a rollback), at once:
    each api replays the log from the snapshot's offset and swaps. Without one, a reindex job runs first."""
    default = swap.default_version
    if version == default:
        registry.activate(None)  # back to the configured model
        return JSONResponse(Activation(version=version).model_dump())
    if not registry.has(version):
        raise NotFound(f"no registry version {version!r} (GET /models)")
    if swap.has_snapshot(version):
        registry.activate(version)
        return JSONResponse(Activation(version=version).model_dump())
    job = queue.submit(ReindexJob(version=version))
    return JSONResponse(Activation(version=version, job_id=job.id).model_dump(), status_code=202)

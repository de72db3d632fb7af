"""GET /models, GET /models/active, POST /models/{version}/activate (promotion and rollback)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse

from app.deps import EngineDep, require_read_key, require_write_key
from app.errors import NotFound
from app.schemas import NAME_PATTERN, Activation, ActiveModel, ModelsPage
from models.vector_index import SNAPSHOT_META

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_read_key)])


@router.get("", response_model=ModelsPage)
def list_models(engine: EngineDep) -> ModelsPage:
    """Registered versions with their xling.json (metrics, training config), newest first."""
    versions = engine.registry.versions()
    return ModelsPage(data=versions, count=len(versions), active=engine.registry.active())


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

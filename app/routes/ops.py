"""Liveness, readiness, Prometheus metrics and the search page."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import EngineDep
from app.schemas import Health

router = APIRouter(tags=["operations"])


def _health(engine: EngineDep, status: str) -> Health:
    pair, source = engine.serving, engine.model_source
    return Health(
        status=status,
        model_version=pair.version if pair else None,
        model_origin=source.origin if source else None,
        detail=engine.load_error or (engine.applier.last_error if engine.applier else None),
    )


@router.get("/healthz", response_model=Health)
async def healthz(engine: EngineDep) -> Health:
    """Live: the process answers. Says which model serves (null while loading)."""
    return _health(engine, "ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(engine: EngineDep) -> Response:
    """Ready: model and index loaded and caught up with the log; 503 until then."""
    if engine.ready:
        return JSONResponse(_health(engine, "ready").model_dump())
    status = "failed" if engine.load_error else "loading"
    return JSONResponse(_health(engine, status).model_dump(), status_code=503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def search_page() -> HTMLResponse:
    return HTMLResponse(files("app").joinpath("static/index.html").read_text(encoding="utf-8"))

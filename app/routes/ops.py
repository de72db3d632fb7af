"""Liveness, readiness, Prometheus metrics and the search page."""

from __future__ import annotations

import asyncio
from importlib.resources import files

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from xling.app.deps import EngineDep, JobQueueDep, SwapDep
from xling.app.schemas import Health
from xling.state.jobstore import NO_WORKER

router = APIRouter(tags=["operations"])


async def _health(engine: EngineDep, swap: SwapDep, queue: JobQueueDep, status: str) -> Health:
    pair, source = swap.pair, swap.source
    health = Health(
        status=status,
        model_version=pair.version if pair else None,
        model_origin=source.origin if source else None,
        detail=engine.problem,
        centering=_centering_state(swap),
    )
    try:
        health.workers = len(await asyncio.to_thread(queue.live_workers))
        health.calibration = await asyncio.to_thread(engine.calibration_job)
    except RedisError as exc:
        health.redis = "unreachable"
        health.warnings.append(f"Redis is unreachable ({exc}); writes, jobs and uncached reads answer 503")
    if health.workers == 0:
        health.warnings.append(NO_WORKER)
    return health


def _centering_state(swap: SwapDep) -> str:
    if not swap.settings.centering:
        return "off"
    pair = swap.pair
    if pair is None or pair.centering is None:
        return "uncalibrated"
    return f"calibrated:{pair.centering.id}"


@router.get("/healthz", response_model=Health)
async def healthz(engine: EngineDep, swap: SwapDep, queue: JobQueueDep) -> Health:
    """Live: the process answers (200 even while Redis is down or no worker runs; see `warnings`)."""
    return await _health(engine, swap, queue, "ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(engine: EngineDep, swap: SwapDep, queue: JobQueueDep) -> Response:
    """Ready: model and index loaded, caught up with the log, and Redis reachable; 503 otherwise."""
    if not engine.ready:
        status = "failed" if engine.load_error else "loading"
        return JSONResponse((await _health(engine, swap, queue, status)).model_dump(), status_code=503)
    health = await _health(engine, swap, queue, "ready")
    if health.redis != "ok":
        health.status = "redis_unreachable"
        return JSONResponse(health.model_dump(), status_code=503, headers={"Retry-After": "2"})
    return JSONResponse(health.model_dump())


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def search_page() -> HTMLResponse:
    return HTMLResponse(files("xling.app").joinpath("static/index.html").read_text(encoding="utf-8"))

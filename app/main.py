"""create_app(): the FastAPI service around an Engine made in lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from xling.app.errors import install_error_handlers
from xling.app.middleware import BodyChecks, RequestMetrics
from xling.app.openapi import install_openapi
from xling.app.routes import datasets, documents, jobs, models, openai, ops, search
from xling.serving.engine import Engine
from xling.serving.metrics import Metrics
from xling.state.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings, metrics)
        app.state.engine = engine
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    # /docs and /redoc from assets the fastapi-offline package ships: a self-hosted service works without a CDN.
    app = FastAPIOffline(
        title="xling",
        summary="Multilingual dense retrieval that fine-tunes, evaluates and hot-swaps its own encoder.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    install_openapi(app, settings)
    app.include_router(documents.router)
    app.include_router(search.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(datasets.router)
    app.include_router(openai.router)
    app.include_router(ops.router)
    # Outermost last: metrics see every request, including those the size limit refuses.
    app.add_middleware(BodyChecks, max_bytes=settings.max_body_bytes, upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app

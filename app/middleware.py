"""ASGI middleware: request body checks (size, a blank media type) and per-route latency metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xling.app.errors import error_body
from xling.serving.metrics import Metrics


async def _reply(send: Send, status: int, detail: str, code: str) -> None:
    body = json.dumps(error_body(detail, code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def _reply_413(send: Send, limit: int) -> None:
    await _reply(send, 413, f"request body over {limit} bytes", "payload_too_large")


class BodyChecks:
    """413 for bodies over the limit, whether or not the client sent Content-Length; 415 for a body sent with a
    blank Content-Type header (FastAPI would read it as JSON; a client that names no media type at all still
    gets that leniency, one that sends an empty one is told what to send)."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes or max_bytes  # dataset uploads (POST /datasets) are larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if scope.get("path", "").startswith("/datasets") else self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reply_413(send, limit)
            return
        # Read the body here (the app would buffer it anyway) so an oversized one never reaches a route.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await _reply_413(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        media = dict(scope.get("headers", [])).get(b"content-type")
        if body and media is not None and not media.strip():
            await _reply(send, 415, "send the body as JSON with the header 'Content-Type: application/json' (got an "
                         "empty Content-Type)", "unsupported_media_type")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later reads wait for the disconnect, as usual

        await self.app(scope, replay, send)


class RequestMetrics:
    """Latency histogram labelled by route template (`/index/{doc_id}`), not raw path, to bound cardinality."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request_latency.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - started
            )

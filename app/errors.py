"""The service's error type and its one handler: clear 4xx for callers, no stack traces in 5xx."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class XlingError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(XlingError):
    status_code, code = 422, "invalid_input"


class NotFound(XlingError):
    status_code, code = 404, "not_found"


class Conflict(XlingError):
    status_code, code = 409, "conflict"


class Unauthorized(XlingError):
    status_code, code = 401, "unauthorized"


class PayloadTooLarge(XlingError):
    status_code, code = 413, "payload_too_large"


class Overloaded(XlingError):
    status_code, code = 429, "overloaded"


class NotReady(XlingError):
    status_code, code = 503, "not_ready"


class WriteTimeout(XlingError):
    status_code, code = 503, "write_not_applied"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XlingError)
    async def _xling_error(_: Request, exc: XlingError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log", "code": "internal"}, status_code=500)

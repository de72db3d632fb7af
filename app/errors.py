"""The service's error type and its handlers: every error answers one JSON shape.

    {"detail": "<one readable sentence>", "code": "<machine code>", "errors": [{"field", "message"}]}

`errors` lists one entry per invalid field (empty for errors that are not about a field). FastAPI's
own validation lists and Starlette's HTTP errors are translated into this shape, so clients parse one
thing, and pattern failures name the rule the docs state (docs/errors.md) rather than the regular expression.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from xling.app.schemas import (
    DOC_ID_PATTERN,
    LANG_LIST_PATTERN,
    LANG_PATTERN,
    NAME_PATTERN,
    OFFSET_PATTERN,
    WAIT_PATTERN,
    WAIT_SECONDS_PATTERN,
)
from xling.state.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    StoreUnavailable,
    Unauthorized,
    WriteTimeout,
    XlingError,
)

log = logging.getLogger(__name__)

# What each pattern means, in the docs' words.
PATTERN_RULES = {
    DOC_ID_PATTERN: "1-256 characters from letters, digits and . _ : @ + = ~ -, starting with a letter, digit or _",
    LANG_PATTERN: "a language code such as 'de', 'gsw', 'zh-Hans' or 'pt-BR'",
    NAME_PATTERN: "1-128 characters from letters, digits and . _ -, starting with a letter or digit",
    LANG_LIST_PATTERN: "language codes such as 'de' or 'zh-Hans', comma-separated",
    WAIT_PATTERN: "true, false, or seconds from 1 to 3600 (e.g. 120 or 2.5)",
    WAIT_SECONDS_PATTERN: "seconds up to 3600 (e.g. 120 or 0.5)",
    OFFSET_PATTERN: "a log offset as writes return it, e.g. '1733600000000-0'",
}
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
}


# The HTTP status (and headers) that answer each of xling's errors.
STATUS: dict[type[XlingError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    PayloadTooLarge: 413,
    Overloaded: 429,
    NotReady: 503,
    WriteTimeout: 503,
    StoreUnavailable: 503,
}
HEADERS: dict[type[XlingError], dict[str, str]] = {
    Unauthorized: {"WWW-Authenticate": "Bearer"},
    StoreUnavailable: {"Retry-After": "2"},
}


def error_response(exc: XlingError) -> JSONResponse:
    status = STATUS.get(type(exc), 400)
    field = getattr(exc, "field", None)
    errors = [{"field": field, "message": exc.message}] if field else []
    return JSONResponse(error_body(exc.message, exc.code, errors), status_code=status, headers=HEADERS.get(type(exc)))


def error_body(detail: str, code: str, errors: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    return {"detail": detail, "code": code, "errors": list(errors)}


def field_name(loc: Sequence[str | int]) -> str:
    """('body', 'documents', 0, 'id') -> 'documents[0].id'; ('query', 'k') -> 'k'."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "form") else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def field_message(error: dict[str, Any]) -> str:
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        return "must be " + PATTERN_RULES.get(ctx.get("pattern", ""), f"of the form {ctx.get('pattern')}")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (extra fields are not allowed)"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({ctx.get('error', 'decode error')})"
    message = str(error.get("msg", "is invalid"))
    return message.removeprefix("Value error, ")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    raw = list(exc.errors())
    content_type = request.headers.get("content-type")
    body_wrong_type = any(tuple(e.get("loc", ())) == ("body",) for e in raw)
    if body_wrong_type and content_type and not _is_json(content_type) and "multipart" not in content_type:
        detail = f"send the body as JSON with the header 'Content-Type: application/json' (got {content_type!r})"
        return JSONResponse(error_body(detail, "unsupported_media_type"), status_code=415)
    errors = [{"field": field_name(e.get("loc", ())), "message": field_message(e)} for e in raw]
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse(error_body(f"invalid request: {shown}{more}", "invalid_input", errors), status_code=422)


def _http_error_detail(exc: StarletteHTTPException) -> str:
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 (byte {cause.start}: {cause.reason}); send JSON encoded as UTF-8"
    return str(exc.detail)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API description lists for `path`, from its most specific matching template
    (`/index/stats` is its own resource, not a document id under `/index/{doc_id}`)."""
    matches: dict[int, set[str]] = {}
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^}:]+:path\\}", ".+", re.sub(r"\\{[^}:]+\\}", "[^/]+", re.escape(template)))
        if re.fullmatch(pattern, path):
            matches.setdefault(template.count("{"), set()).update(method.upper() for method in operations)
    return sorted(matches[min(matches)]) if matches else []


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XlingError)
    async def _xling_error(_: Request, exc: XlingError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow lists every method of the path, not just one route's
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return JSONResponse(error_body(_http_error_detail(exc), code), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        # One line, no traceback: an outage is an operating condition, and it repeats per request.
        log.warning("redis unreachable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(StoreUnavailable(f"the document store (Redis) is unreachable; retry shortly ({exc})"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal error; see the server log", "internal"), status_code=500)

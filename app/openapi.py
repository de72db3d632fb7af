"""The OpenAPI description, made to match what this service does with its settings.

FastAPI's generated description says less than the service does: it documents 422 as a list of
validation errors (ours is one shape, `ErrorOut`), omits the other error statuses, declares every
bearer scheme whether or not a key is set, and cannot know limits that come from settings. This
module rewrites the generated document once per process so that a client generated from it, or a
contract tester, sees the API as it behaves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from xling.app.schemas import ErrorOut
from xling.state.settings import Settings

# Statuses operations can answer besides their success: 422 with parameters or a body, these by what
# the operation has, and the per-operation ones below.
_BODY_ERRORS = (400, 413, 415)  # not UTF-8, too large, not JSON
_PATH_ERRORS = (404,)  # the id in the path names nothing
_REDIS_ERRORS = (503,)  # not ready, write not applied, Redis unreachable
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/search"): (429,),
    ("get", "/search"): (429,),
    ("post", "/v1/embeddings"): (404, 429),
    ("post", "/datasets"): (409, 413),
    ("delete", "/datasets/{name}"): (409,),
    ("delete", "/models/{version}"): (409,),
    ("delete", "/jobs/{job_id}"): (409,),
    ("post", "/jobs/{job_id}/retry"): (409,),
    ("delete", "/jobs/{job_id}/artefacts"): (409,),
    ("post", "/jobs/finetune"): (404,),
    ("post", "/jobs/evaluate"): (404,),
    ("post", "/jobs/experiment"): (404,),
    ("post", "/jobs/reindex"): (404,),
    ("delete", "/index/{doc_id}"): (404,),
}
_NO_REDIS = {"/healthz", "/readyz"}
_DESCRIPTIONS = {
    400: "Bad request (e.g. a body that is not UTF-8)",
    401: "Missing or wrong API key",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Payload too large",
    415: "Send Content-Type: application/json",
    422: "Invalid input: `errors` names each field",
    429: "Too many queued requests; retry shortly",
    503: "Not ready, write not yet applied, or Redis unreachable (Retry-After)",
}


def _open_guards(settings: Settings) -> set[str]:
    """Bearer schemes whose routes are open with these settings (their key is unset)."""
    open_ = set()
    if settings.api_key is None:
        open_.add("writeKey")
    if settings.search_api_key is None:
        open_.add("searchKey")
    if settings.api_key is None and settings.search_api_key is None:
        open_.add("readKey")
    return open_


def _limit(schema: dict[str, Any], name: str, prop: str, **constraints: Any) -> None:
    target = schema["components"]["schemas"].get(name, {}).get("properties", {}).get(prop)
    if target is not None:
        # Optional fields are anyOf [type, null]: constrain the non-null branch.
        branches = [b for b in target.get("anyOf", [target]) if b.get("type") != "null"]
        for branch in branches:
            branch.update(constraints)


def _apply_limits(schema: dict[str, Any], settings: Settings) -> None:
    """The size limits of settings, and 'not only whitespace', which pydantic models cannot state."""
    not_blank = r"\S"
    _limit(schema, "SearchRequest", "query", minLength=1, maxLength=settings.max_query_chars, pattern=not_blank)
    _limit(schema, "SearchRequest", "k", minimum=1, maximum=settings.max_k)
    _limit(schema, "SearchRequest", "langs", maxItems=settings.max_langs_per_query)
    _limit(schema, "DocumentIn", "text", maxLength=settings.max_text_chars, pattern=not_blank)
    _limit(schema, "IndexRequest", "documents", maxItems=settings.max_docs_per_request)
    _limit(schema, "DeleteRequest", "ids", maxItems=settings.max_docs_per_request)
    search = schema["paths"].get("/search", {}).get("get", {})
    for parameter in search.get("parameters", []):
        if parameter["name"] == "q":
            parameter["schema"].update(minLength=1, maxLength=settings.max_query_chars, pattern=not_blank)
        if parameter["name"] == "k":
            parameter["schema"].update(minimum=1, maximum=settings.max_k)


def _document_errors(path: str, method: str, operation: dict[str, Any], open_guards: set[str]) -> None:
    responses = operation.setdefault("responses", {})
    statuses: set[int] = set()
    if "requestBody" in operation or operation.get("parameters"):
        statuses.add(422)
    if "requestBody" in operation:
        statuses.update(_BODY_ERRORS)
    if "{" in path:
        statuses.update(_PATH_ERRORS)
    if path not in _NO_REDIS:
        statuses.update(_REDIS_ERRORS)
    statuses.update(_ERRORS.get((method, path), ()))
    security = [req for req in operation.get("security", []) if not set(req) & open_guards]
    if any("writeKey" in req for req in security):  # the write key also reads: one requirement, not two
        security = [req for req in security if "writeKey" in req]
    if security:
        operation["security"] = security
        statuses.add(401)
    else:
        operation.pop("security", None)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {})
        error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.setdefault("schemas", {}).update(error_schema.pop("$defs", {}), ErrorOut=error_schema)
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)
        open_guards = _open_guards(settings)
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                _document_errors(path, method, operation, open_guards)
        schemes = components.get("securitySchemes", {})
        for name in open_guards:
            schemes.pop(name, None)
        if not schemes:
            components.pop("securitySchemes", None)
        _apply_limits(schema, settings)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]

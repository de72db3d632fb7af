"""POST /index, GET/DELETE /index/{id}, POST /index/delete, GET /index/stats."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from xling.app import limits
from xling.app.deps import (
    DocStoreDep,
    EngineDep,
    HoldsDep,
    SettingsDep,
    require_read_key,
    require_search_key,
    require_write_key,
)
from xling.app.schemas import (
    DOC_ID_PATTERN,
    OFFSET_PATTERN,
    WAIT_PATTERN,
    WAIT_SECONDS_PATTERN,
    DeleteRequest,
    DeleteResponse,
    DocumentOut,
    IndexRequest,
    IndexResponse,
    IndexStats,
    WriteApplied,
)
from xling.state.errors import NotFound

router = APIRouter(prefix="/index", tags=["documents"])
write_guard = [Depends(require_write_key)]


WaitQuery = Annotated[str, Query(
    pattern=WAIT_PATTERN,
    description="true: answer once searchable here, up to XLING_WRITE_TIMEOUT_S (503 past it); a number: up to"
    " that many seconds (1 to 3600); false: answer 202 once stored durably, with the log offset to wait on"
    " (GET /index/applied)")]


def _applied(response: Response, wait_s: float | None, offset: str | None) -> bool:
    """Whether the answer waited for the write to be applied here (or there was nothing to write); one that did
    not (wait=false) is a 202."""
    applied = wait_s is not None or offset is None
    if not applied:
        response.status_code = 202
    return applied


@router.post("", response_model=IndexResponse, dependencies=write_guard,
             responses={202: {"model": IndexResponse, "description": "stored durably, not waited on (wait=false)"}})
async def index_documents(
    body: IndexRequest, engine: EngineDep, settings: SettingsDep, response: Response, wait: WaitQuery = "true"
) -> IndexResponse:
    """Upsert documents; returns once they are searchable on this replica (503 past the wait)."""
    wait_s = limits.write_wait(wait, settings)
    docs = limits.documents(body.documents, settings)
    offset = await engine.upsert(docs, wait_s)
    return IndexResponse(indexed=len(docs), log_offset=offset, applied=_applied(response, wait_s, offset))


@router.post("/delete", response_model=DeleteResponse, dependencies=write_guard,
             responses={202: {"model": DeleteResponse, "description": "stored durably, not waited on (wait=false)"}})
async def delete_documents(
    body: DeleteRequest, engine: EngineDep, settings: SettingsDep, response: Response, wait: WaitQuery = "true"
) -> DeleteResponse:
    """Delete several documents; ids that do not exist are reported, not an error."""
    wait_s = limits.write_wait(wait, settings)
    limits.check_batch(body.ids, settings, "ids")
    offset, missing = await engine.delete(body.ids, wait_s)
    return DeleteResponse(deleted=len(body.ids) - len(missing), missing=missing, log_offset=offset,
                          applied=_applied(response, wait_s, offset))


@router.get("/applied", response_model=WriteApplied, dependencies=[Depends(require_read_key)])
async def write_applied(
    engine: EngineDep,
    offset: Annotated[str, Query(pattern=OFFSET_PATTERN, description="a write's log_offset")],
    wait: Annotated[str, Query(pattern=WAIT_SECONDS_PATTERN,
                               description="seconds to wait for it (at most 3600); 0: say at once")] = "0",
) -> WriteApplied:
    """Whether this replica has applied the log up to `offset` (the write is searchable here), waiting up to
    `wait` seconds for it."""
    applied = await engine.applied(offset, float(wait))
    return WriteApplied(offset=offset, applied=applied, applied_offset=engine.require_pair().applied_offset)


@router.get("/stats", response_model=IndexStats, dependencies=[Depends(require_read_key)])
async def index_stats(engine: EngineDep, docs: DocStoreDep, holds: HoldsDep) -> IndexStats:
    pair = engine.require_pair()
    return IndexStats(
        documents=await engine.document_count(),
        vectors=await asyncio.to_thread(len, pair.index),
        index=await asyncio.to_thread(pair.index.describe),
        languages=await asyncio.to_thread(pair.index.languages),
        model_version=pair.version,
        applied_offset=pair.applied_offset,
        log_offset=await docs.last_offset(),
        log_entries=await docs.log_length(),
        log_trimmed_to=await asyncio.to_thread(holds.trimmed_to),
        lexical=await asyncio.to_thread(engine.lexical_stats, pair),
    )


DocIdPath = Path(pattern=DOC_ID_PATTERN)


@router.get("/{doc_id}", response_model=DocumentOut, dependencies=[Depends(require_search_key)])
async def get_document(engine: EngineDep, doc_id: str = DocIdPath) -> DocumentOut:
    (doc,) = await engine.documents([doc_id])
    if doc is None:
        raise NotFound(f"no document with id {doc_id!r}")
    return DocumentOut(id=doc_id, text=doc.text, lang=doc.lang, metadata=doc.metadata)


@router.delete("/{doc_id}", response_model=DeleteResponse, dependencies=write_guard)
async def delete_document(engine: EngineDep, settings: SettingsDep, doc_id: str = DocIdPath) -> DeleteResponse:
    offset, _ = await engine.delete([doc_id], settings.write_timeout_s, must_exist=True)
    return DeleteResponse(deleted=1, missing=[], log_offset=offset, applied=True)

"""POST /index, GET/DELETE /index/{id}, POST /index/delete, GET /index/stats."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path

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
    DeleteRequest,
    DeleteResponse,
    DocumentOut,
    IndexRequest,
    IndexResponse,
    IndexStats,
)
from xling.state.errors import NotFound

router = APIRouter(prefix="/index", tags=["documents"])
write_guard = [Depends(require_write_key)]


@router.post("", response_model=IndexResponse, dependencies=write_guard)
async def index_documents(body: IndexRequest, engine: EngineDep, settings: SettingsDep) -> IndexResponse:
    """Upsert documents; returns once they are searchable on this replica (503 past the deadline)."""
    docs = limits.documents(body.documents, settings)
    offset = await engine.upsert(docs)
    return IndexResponse(indexed=len(docs), log_offset=offset)


@router.post("/delete", response_model=DeleteResponse, dependencies=write_guard)
async def delete_documents(body: DeleteRequest, engine: EngineDep, settings: SettingsDep) -> DeleteResponse:
    """Delete several documents; ids that do not exist are reported, not an error."""
    limits.check_batch(body.ids, settings)
    missing = await engine.delete(body.ids)
    return DeleteResponse(deleted=len(body.ids) - len(missing), missing=missing)


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
async def delete_document(engine: EngineDep, doc_id: str = DocIdPath) -> DeleteResponse:
    await engine.delete([doc_id], must_exist=True)
    return DeleteResponse(deleted=1, missing=[])

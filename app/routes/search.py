"""POST /search (JSON body) and GET /search?q=&k=&lang= (browsers, curl)."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import StringConstraints

from xling.app import limits
from xling.app.deps import EngineDep, SettingsDep, require_search_key
from xling.app.schemas import (
    LANG_LIST_PATTERN,
    LANG_PATTERN,
    HitOut,
    QueryInt,
    SearchRequest,
    SearchResponse,
)
from xling.models.index.fusion import SearchMode
from xling.serving.search import SearchQuery, SearchResult
from xling.state.errors import InvalidInput

router = APIRouter(tags=["search"], dependencies=[Depends(require_search_key)])
_LANG = re.compile(LANG_PATTERN)


def _response(result: SearchResult, started: float) -> SearchResponse:
    hits = [
        HitOut(id=h.id, score=h.score, rank=h.rank, text=h.doc.text, lang=h.doc.lang, metadata=h.doc.metadata,
               ranks=h.ranks)
        for h in result.hits
    ]
    return SearchResponse(
        hits=hits, model_version=result.model_version, took_ms=round((time.perf_counter() - started) * 1000, 2)
    )


async def _run(query: SearchQuery, engine: EngineDep, started: float) -> SearchResponse:
    return _response(await engine.search(query), started)


@router.post("/search", response_model=SearchResponse)
async def search_post(body: SearchRequest, engine: EngineDep, settings: SettingsDep) -> SearchResponse:
    """Top-k documents for a query in any language; `langs` and `filter` restrict the candidates, in every mode."""
    started = time.perf_counter()
    query = limits.search_query(body.query, body.k, body.langs, body.filter, settings, body.query_lang, body.mode)
    return await _run(query, engine, started)


_GET_NAMES = {"query": "q", "langs": "lang"}  # POST /search's field -> GET /search's parameter


@router.get("/search", response_model=SearchResponse)
async def search_get(
    engine: EngineDep,
    settings: SettingsDep,
    q: Annotated[str, Query(description="the query text")],
    k: Annotated[QueryInt, Query()] = 10,
    lang: Annotated[
        list[Annotated[str, StringConstraints(pattern=LANG_LIST_PATTERN)]] | None,
        Query(description="repeat or comma-separate: lang=de&lang=fr, lang=de,fr"),
    ] = None,
    query_lang: Annotated[
        str | None, Query(pattern=LANG_PATTERN, description="the query's own language (default: detected)")
    ] = None,
    mode: Annotated[
        SearchMode | None, Query(description="dense | lexical | hybrid (default: the service's XLING_SEARCH_MODE)")
    ] = None,
) -> SearchResponse:
    started = time.perf_counter()
    langs = [part for value in lang or [] for part in value.split(",") if part]
    bad = [code for code in langs if not _LANG.match(code)]
    if bad:
        raise InvalidInput(f"not a language code: {bad[0]!r} (expected e.g. 'de', 'zh-Hans')", "lang")
    try:
        query = limits.search_query(q, k, langs, None, settings, query_lang, mode)
    except InvalidInput as exc:  # the limits name the body's fields; this route's parameters are named otherwise
        exc.field = _GET_NAMES.get(exc.field or "", exc.field)
        raise
    return await _run(query, engine, started)

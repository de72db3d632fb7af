"""Request and response bodies. Shapes are checked here; size limits from settings in `limits.py`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# Ids appear in URLs (`DELETE /index/{id}`), so no '/', whitespace or '?#%'.
DOC_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:@+=~-]{0,255}$"
# BCP 47-like: a 2-3 letter primary subtag, optional subtags (`zh-Hans`, `pt-BR`, `sr-Latn-RS`).
LANG_PATTERN = r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$"

DocId = Annotated[str, StringConstraints(pattern=DOC_ID_PATTERN)]
LangCode = Annotated[str, StringConstraints(pattern=LANG_PATTERN)]
MetadataValue = str | int | float | bool | None


def _flat_metadata(value: dict[str, Any]) -> dict[str, Any]:
    for key, item in value.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"metadata key {key[:70]!r} must have 1-64 characters")
        if item is not None and not isinstance(item, str | int | float | bool):
            raise ValueError(f"metadata must be a flat object: {key!r} holds a {type(item).__name__}, not a scalar")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(_flat_metadata)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Strict):
    id: DocId
    text: Annotated[str, StringConstraints(min_length=1)]
    lang: LangCode | None = None
    metadata: Metadata = Field(default_factory=dict, description="flat object: string keys, scalar values")


class IndexRequest(_Strict):
    documents: list[DocumentIn] = Field(min_length=1)


class IndexResponse(BaseModel):
    indexed: int
    log_offset: str


class DeleteRequest(_Strict):
    ids: list[DocId] = Field(min_length=1)


class DeleteResponse(BaseModel):
    deleted: int
    missing: list[str]


class DocumentOut(BaseModel):
    id: str
    text: str
    lang: str | None
    metadata: dict[str, MetadataValue]


class SearchRequest(_Strict):
    query: str
    k: int = 10
    langs: list[LangCode] | None = None
    filter: Metadata | None = Field(None, description="metadata equality: every key must match")


class HitOut(BaseModel):
    id: str
    score: float
    rank: int
    text: str
    lang: str | None
    metadata: dict[str, MetadataValue]


class SearchResponse(BaseModel):
    hits: list[HitOut]
    model_version: str
    took_ms: float


class IndexStats(BaseModel):
    documents: int = Field(description="documents stored in Redis")
    vectors: int = Field(description="vectors in this replica's index")
    languages: dict[str, int]
    model_version: str
    applied_offset: str
    log_offset: str


class Health(BaseModel):
    status: str
    model_version: str | None
    model_origin: str | None
    detail: str | None = None

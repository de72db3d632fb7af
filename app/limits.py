"""Size limits from settings, checked before anything is written or encoded (422 with the reason)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from xling.app.schemas import DocumentIn, MetadataValue
from xling.models.index.fusion import SearchMode
from xling.serving.search import SearchQuery
from xling.state.docstore import StoredDoc
from xling.state.errors import InvalidInput
from xling.state.settings import Settings


def search_query(
    text: str,
    k: int,
    langs: Sequence[str] | None,
    where: dict[str, MetadataValue] | None,
    settings: Settings,
    query_lang: str | None = None,
    mode: SearchMode | None = None,
) -> SearchQuery:
    if not text.strip():
        raise InvalidInput("query is empty", "query")
    if len(text) > settings.max_query_chars:
        raise InvalidInput(f"query has {len(text)} characters; the limit is {settings.max_query_chars}", "query")
    if not 1 <= k <= settings.max_k:
        raise InvalidInput(f"k must be between 1 and {settings.max_k}, got {k}", "k")
    if langs and len(langs) > settings.max_langs_per_query:
        raise InvalidInput(f"at most {settings.max_langs_per_query} languages per query", "langs")
    if where:
        metadata_size(where, settings, field="filter")
    mode = mode or settings.search_mode
    if mode != "dense" and not settings.lexical:
        raise InvalidInput(f"mode {mode!r} needs the lexical index, which is off here (XLING_LEXICAL=false)", "mode")
    return SearchQuery(
        text, k, tuple(dict.fromkeys(langs or ())), tuple(sorted((where or {}).items())), query_lang or None, mode
    )


def metadata_size(
    metadata: dict[str, MetadataValue], settings: Settings, doc_id: str | None = None, field: str = "metadata"
) -> None:
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > settings.max_metadata_bytes:
        owner = f"document {doc_id!r}: " if doc_id else ""
        raise InvalidInput(
            f"{owner}metadata is {size} bytes as JSON; the limit is {settings.max_metadata_bytes}", field
        )


def documents(docs: Sequence[DocumentIn], settings: Settings) -> list[tuple[str, StoredDoc]]:
    check_batch([d.id for d in docs], settings)
    for i, doc in enumerate(docs):
        if not doc.text.strip():
            raise InvalidInput(f"document {doc.id!r}: text is empty", f"documents[{i}].text")
        if len(doc.text) > settings.max_text_chars:
            raise InvalidInput(
                f"document {doc.id!r}: text has {len(doc.text)} characters; the limit is {settings.max_text_chars} "
                "(the encoder reads the first max_seq_length tokens of what is accepted)", f"documents[{i}].text"
            )
        metadata_size(doc.metadata, settings, doc.id, f"documents[{i}].metadata")
    return [(d.id, StoredDoc(d.text, d.lang, d.metadata)) for d in docs]


def check_batch(ids: Sequence[str], settings: Settings, field: str = "documents") -> None:
    """At most XLING_MAX_DOCS_PER_REQUEST ids, none twice; `field` names the request's list (documents, ids)."""
    if len(ids) > settings.max_docs_per_request:
        raise InvalidInput(f"{len(ids)} documents in one request; the limit is {settings.max_docs_per_request}", field)
    seen: set[str] = set()
    for i, doc_id in enumerate(ids):
        if doc_id in seen:
            where = f"{field}[{i}].id" if field == "documents" else f"{field}[{i}]"
            raise InvalidInput(f"id {doc_id!r} appears more than once in the request", where)
        seen.add(doc_id)


def write_wait(value: str, settings: Settings) -> float | None:
    """A write's `wait` query parameter (WAIT_PATTERN checked it) in seconds: `true` is XLING_WRITE_TIMEOUT_S,
    `false` None (answer once stored)."""
    if value == "true":
        return settings.write_timeout_s
    if value == "false":
        return None
    return float(value)

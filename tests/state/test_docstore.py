"""The document store alone, on a real Redis: writes go to the hash and the log together; readers see both."""

from __future__ import annotations

from typing import Any

from tests.conftest import doc_store_call
from xling.state.docstore import START_OFFSET, DocReader, StoredDoc, offset_key


def write(redis_url: str, action: str, *args: object) -> Any:
    return doc_store_call(redis_url, action, *args)


def doc(text: str, lang: str | None = "en") -> StoredDoc:
    return StoredDoc(text=text, lang=lang, metadata={"source": "test"})


def test_an_upsert_stores_documents_and_logs_each_in_order(redis_url: str, doc_reader: DocReader) -> None:
    assert doc_reader.last_offset() == START_OFFSET
    offset = write(redis_url, "upsert", [("a", doc("one")), ("b", doc("two", "de"))])
    entries = doc_reader.read_log(START_OFFSET, 10)
    assert [(e.op, e.doc_id) for e in entries] == [("upsert", "a"), ("upsert", "b")]
    assert entries[-1].offset == offset == doc_reader.last_offset()
    assert offset_key(entries[0].offset) < offset_key(entries[1].offset)
    assert doc_reader.get_many(["a", "b", "missing"]) == {"a": doc("one"), "b": doc("two", "de")}
    assert write(redis_url, "get_many", ["b", "missing"]) == [doc("two", "de"), None]
    assert (doc_reader.count(), write(redis_url, "count"), write(redis_url, "log_length")) == (2, 2, 2)


def test_a_delete_logs_only_what_existed_and_reports_the_rest(redis_url: str, doc_reader: DocReader) -> None:
    write(redis_url, "upsert", [("a", doc("one"))])
    offset, missing = write(redis_url, "delete", ["a", "ghost"])  # type: ignore[misc]
    assert missing == ["ghost"] and offset == doc_reader.last_offset()
    assert [(e.op, e.doc_id) for e in doc_reader.read_log(START_OFFSET, 10)] == [("upsert", "a"), ("delete", "a")]
    assert doc_reader.get_many(["a"]) == {}
    assert write(redis_url, "delete", ["ghost"]) == (None, ["ghost"])  # nothing existed: nothing logged


def test_reading_the_log_after_an_offset_and_every_document_in_chunks(redis_url: str, doc_reader: DocReader) -> None:
    first = write(redis_url, "upsert", [(f"d{i}", doc(f"text {i}")) for i in range(5)])
    write(redis_url, "upsert", [("late", doc("late"))])
    assert [e.doc_id for e in doc_reader.read_log(str(first), 10)] == ["late"]
    chunks = list(doc_reader.iter_all(chunk=2))
    assert sorted(doc_id for chunk in chunks for doc_id, _ in chunk) == sorted([*(f"d{i}" for i in range(5)), "late"])
    assert all(len(chunk) <= 2 for chunk in chunks)

"""Documents of record in a Qdrant collection's payload (XLING_DOCUMENT_STORE=qdrant): the corpus a build reads
from it (worker/build_tiers.py copies a build into a collection with each document's text)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from xling.models.index.qdrant_index import QdrantIndex
from xling.models.index.vector_index import DocEntry
from xling.state.docstore import StoredDoc


class CollectionCorpus:
    """The corpus as a collection's payload keeps it (a docstore.Corpus), with the offset its record named
    when it was read: a build scrolls it, then replays the log from there."""

    def __init__(self, index: QdrantIndex, offset: str) -> None:
        self.index = index  # read only: dim and version play no part
        self.offset = offset

    def start_offset(self) -> str:
        return self.offset

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDoc]:
        return {doc_id: _document(entry, text) for doc_id, (entry, text) in self.index.stored(ids).items()}

    def iter_all(self, chunk: int = 1_000) -> Iterator[list[tuple[str, StoredDoc]]]:
        for page in self.index.stored_pages(chunk):
            if page:
                yield [(doc_id, _document(entry, text)) for doc_id, (entry, text) in page]

    def count(self) -> int:
        return len(self.index)


def _document(entry: DocEntry, text: str) -> StoredDoc:
    return StoredDoc(text, entry.lang, dict(entry.metadata))

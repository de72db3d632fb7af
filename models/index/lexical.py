"""The lexical index: BM25 over tantivy, one tantivy index per language so that each language keeps its own
statistics (a word common in one language keeps its weight in another).

A document goes to the partition of its language (its `lang`, else the detected one; 'und' when neither says)
and is analysed by that language's analyser (xling.models.index.analysis). A query is analysed by each
partition's analyser in turn and scored there, so both sides of every comparison went through the same steps.
Filters are terms: the declared `lang` and the metadata pairs, the same keys the vector index filters on.

The index lives in a folder on disk and commits after each applied batch; `offset.json` beside the partitions
records the doc-log offset it holds, written after the commits, so a restart replays from there (applying is
idempotent: replaying entries the index already holds changes nothing).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import tantivy

from xling.models.files import write_json_atomic
from xling.models.index.analysis import base_language, terms
from xling.models.index.slots import Scalar, filter_key
from xling.models.language import DETECTOR

log = logging.getLogger(__name__)
OFFSET_FILE = "offset.json"
UNDETERMINED = "und"  # the partition of texts whose language nobody gave and detection could not tell
WRITER_HEAP_BYTES = 15_000_000  # tantivy's minimum per writer thread; partitions are many, batches small


@dataclass(frozen=True)
class LexicalDoc:
    ext_id: str
    text: str
    lang: str | None  # as the caller declared it: what a `langs` filter matches
    metadata: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class LexicalHit:
    ext_id: str
    score: float  # BM25 in the partition that holds the document
    partition: str


class LexicalSearch(ABC):
    """What search and fusion ask of a lexical index: this tantivy one, or the sparse vectors of a Qdrant
    collection (xling.models.index.qdrant_lexical). Each answers per partition; the merged top-k and the
    scaling for fusion follow from that alike."""

    kind: str  # what /index/stats names it
    # The doc-log offset it has applied; None: it follows the vector index it lives in (the serving pair's).
    applied_offset: str | None = None

    @property
    @abstractmethod
    def partitions(self) -> dict[str, int]:
        """Documents per partition."""

    @abstractmethod
    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        """Each partition's k best BM25 scores among documents passing the filter (partitions without a hit left
        out), best first."""

    @abstractmethod
    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        """BM25 of these documents for the query (absent: no term matched, or no such document)."""

    def search(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[LexicalHit]:
        """The k best BM25 scores among documents passing the filter, over every partition that may hold one."""
        return best_first([hit for hits in self.per_partition(text, k, langs, where).values() for hit in hits])[:k]

    def scaled(
        self, text: str, langs: Sequence[str] | None, where: dict[str, Scalar] | None, per_language: bool
    ) -> ScaledLexical:
        return ScaledLexical(self, text, langs, where, per_language)


def partition_of(doc: LexicalDoc) -> str:
    return base_language(doc.lang or DETECTOR.detect(doc.text)) or UNDETERMINED


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    builder.add_text_field("lang", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("meta", tokenizer_name="raw", index_option="basic")
    # Analysed in Python and joined by spaces, so tantivy's whitespace tokenizer only splits them again.
    builder.add_text_field("terms", tokenizer_name="whitespace", index_option="freq")
    return builder.build()


class _Partition:
    """One language's tantivy index and its writer (one writer per folder: tantivy locks it)."""

    def __init__(self, name: str, folder: Path, schema: tantivy.Schema) -> None:
        self.name = name  # the language whose analyser its documents and queries go through
        folder.mkdir(parents=True, exist_ok=True)
        self.index = tantivy.Index(schema, path=str(folder), reuse=True)
        self.writer = self.index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
        self.dirty = False

    def commit(self) -> None:
        if self.dirty:
            self.writer.commit()
            self.index.reload()  # searches see this batch before the write is acknowledged
            self.dirty = False


class LexicalIndex(LexicalSearch):
    """Not thread-safe for writers: one applier writes. Searches may run on any thread meanwhile."""

    kind = "tantivy"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.schema = _schema()
        self._partitions: dict[str, _Partition] = {}
        self._lock = threading.Lock()  # guards the partition table, not tantivy (which is thread-safe)
        folder.mkdir(parents=True, exist_ok=True)
        for child in sorted(folder.iterdir()):
            if child.is_dir() and tantivy.Index.exists(str(child)):
                self._partitions[child.name] = _Partition(child.name, child, self.schema)
        self.applied_offset: str | None = self._read_offset()

    def _read_offset(self) -> str | None:
        try:
            return str(json.loads((self.folder / OFFSET_FILE).read_text(encoding="utf-8"))["applied_offset"])
        except (OSError, ValueError, KeyError):
            return None

    @property
    def partitions(self) -> dict[str, int]:
        """Documents per partition."""
        return {name: part.index.searcher().num_docs for name, part in sorted(self._table().items())}

    def __len__(self) -> int:
        return sum(self.partitions.values())

    def _table(self) -> dict[str, _Partition]:
        with self._lock:
            return dict(self._partitions)

    def _partition(self, name: str) -> _Partition:
        with self._lock:
            if name not in self._partitions:
                self._partitions[name] = _Partition(name, self.folder / name, self.schema)
            return self._partitions[name]

    # Writes -------------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[LexicalDoc]) -> None:
        """Each document replaces whatever its id held, in whichever partition that was."""
        self.remove([doc.ext_id for doc in docs])
        for doc in docs:
            part = self._partition(partition_of(doc))
            entry = tantivy.Document()
            entry.add_text("id", doc.ext_id)
            entry.add_text("lang", doc.lang or "")
            for key, value in doc.metadata.items():
                entry.add_text("meta", filter_key(key, value))
            entry.add_text("terms", " ".join(terms(doc.text, part.name)))
            part.writer.add_document(entry)
            part.dirty = True

    def remove(self, ext_ids: Iterable[str]) -> None:
        ids = list(ext_ids)
        for part in self._table().values():
            searcher = part.index.searcher()  # one per partition: the committed state the ids are looked up in
            for ext_id in ids:
                if searcher.doc_freq("id", ext_id):
                    part.writer.delete_documents_by_term("id", ext_id)
                    part.dirty = True

    def commit(self, applied_offset: str | None) -> None:
        """Make the writes since the last commit durable and searchable, then record the doc-log offset they
        reach (None: not yet at one, as midway through a build)."""
        for part in self._table().values():
            part.commit()
        if applied_offset is not None:
            write_json_atomic(self.folder / OFFSET_FILE, {"applied_offset": applied_offset})
            self.applied_offset = applied_offset

    def close(self) -> None:
        """Release the writers (and with them tantivy's folder locks)."""
        with self._lock:
            self._partitions.clear()

    def clear(self) -> None:
        """Drop every document (a rebuild from the document store follows)."""
        with self._lock:
            for name, part in self._partitions.items():
                part.writer.delete_all_documents()
                part.writer.commit()
                part.writer.wait_merging_threads()
                shutil.rmtree(self.folder / name, ignore_errors=True)
            self._partitions.clear()
        (self.folder / OFFSET_FILE).unlink(missing_ok=True)
        self.applied_offset = None

    # Search -------------------------------------------------------------------------------------
    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        found: dict[str, list[LexicalHit]] = {}
        if k <= 0:
            return found
        for name, part in self._candidates(langs):
            query = self._query(text, name, langs, where)
            if query is None:
                continue
            searcher = part.index.searcher()
            hits = [LexicalHit(str(searcher.doc(address)["id"][0]), float(score), name)
                    for score, address in searcher.search(query, limit=k, count=False).hits]
            if hits:
                found[name] = best_first(hits)
        return found

    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        if not ext_ids:
            return {}
        # The id set must match and the words only score: tantivy then walks the few ids, not every document
        # holding a common query word. An id no word reaches scores 0 and is left out.
        only = (tantivy.Occur.Must, _unscored(tantivy.Query.term_set_query(self.schema, "id", list(ext_ids))))
        found: dict[str, LexicalHit] = {}
        for name, part in self._table().items():
            words = self._words(text, name)
            if not words:
                continue
            query = tantivy.Query.boolean_query([only, *((tantivy.Occur.Should, word) for word in words)])
            searcher = part.index.searcher()
            for score, address in searcher.search(query, limit=len(ext_ids), count=False).hits:
                if score > 0:
                    ext_id = str(searcher.doc(address)["id"][0])
                    found[ext_id] = LexicalHit(ext_id, float(score), name)
        return found

    def _candidates(self, langs: Sequence[str] | None) -> list[tuple[str, _Partition]]:
        table = self._table()
        if not langs:
            return sorted(table.items())
        # A declared language's documents sit in its base language's partition; undeclared ones never match.
        wanted = {base_language(lang) for lang in langs}
        return sorted((name, part) for name, part in table.items() if name in wanted)

    def _words(self, text: str, partition: str) -> list[tantivy.Query]:
        """One term query per distinct term of the text as `partition` analyses it."""
        return [tantivy.Query.term_query(self.schema, "terms", term) for term in _query_terms(text, partition)]

    def _query(
        self,
        text: str,
        partition: str,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
    ) -> tantivy.Query | None:
        words = self._words(text, partition)
        if not words:
            return None
        clauses = [(tantivy.Occur.Must, tantivy.Query.boolean_query([(tantivy.Occur.Should, w) for w in words]))]
        if langs:
            declared = tantivy.Query.term_set_query(self.schema, "lang", list(langs))
            clauses.append((tantivy.Occur.Must, _unscored(declared)))
        for key, value in (where or {}).items():
            term = tantivy.Query.term_query(self.schema, "meta", filter_key(key, value))
            clauses.append((tantivy.Occur.Must, _unscored(term)))
        return tantivy.Query.boolean_query(clauses)


class ScaledLexical:
    """One query's BM25 divided by its best among the filtered documents: the best over all of them, or (with
    `per_language`) the best in each document's language partition, so that no language's documents are lifted
    as a whole. What weighted fusion adds to the cosine (xling.models.index.fusion)."""

    def __init__(
        self,
        index: LexicalSearch,
        text: str,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        per_language: bool,
    ) -> None:
        self.index, self.text, self.langs, self.where, self.per_language = index, text, langs, where, per_language
        self._best: dict[str, float] | None = None  # partition -> the query's best BM25 there

    def top(self, depth: int) -> list[tuple[str, float]]:
        """The exact `depth` best scaled scores: each partition's best by BM25 are its best scaled, so merging
        every partition's first `depth` and cutting at `depth` misses none."""
        found = self.index.per_partition(self.text, max(depth, 1), self.langs, self.where)
        if self._best is None:
            self._best = {name: hits[0].score for name, hits in found.items()}
        scaled = [(hit.ext_id, self._scale(hit)) for hits in found.values() for hit in hits]
        return sorted(scaled, key=lambda item: (-item[1], item[0]))[:depth]

    def of(self, ext_ids: Sequence[str]) -> dict[str, float]:
        if self._best is None:
            self.top(1)
        return {ext_id: self._scale(hit) for ext_id, hit in self.index.scores(self.text, ext_ids).items()}

    def _scale(self, hit: LexicalHit) -> float:
        assert self._best is not None
        best = self._best.get(hit.partition, 0.0) if self.per_language else max(self._best.values(), default=0.0)
        return hit.score / best if best > 0 else 0.0


@lru_cache(maxsize=1024)
def _query_terms(text: str, partition: str) -> tuple[str, ...]:
    """A query's distinct terms in a partition: a hybrid search asks for them in every partition, twice."""
    return tuple(dict.fromkeys(terms(text, partition)))


def best_first(hits: list[LexicalHit]) -> list[LexicalHit]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.ext_id))


def _unscored(query: tantivy.Query) -> tantivy.Query:
    """A filter clause: it must match and adds nothing to the score."""
    return tantivy.Query.const_score_query(query, 0.0)


"""The lexical index: BM25 per language partition, so that each language keeps its own statistics (a word common
in one language keeps its weight in another).

A document goes to the partition of its language (its `lang`, else the detected one; 'und' when neither says)
and is analysed by that language's analyser (xling.models.index.analysis). A query is analysed by each
partition's analyser in turn and scored there, so both sides of every comparison went through the same steps.
Filters are the declared `lang` and the metadata pairs, the same keys the vector index filters on.

The partitions are sparse matrices in memory (xling.models.index.bm25): a micro-batch of hybrid queries is
scored in one product per partition, and the fill-in of fusion (the BM25 of the dense candidates) is a lookup
in the same product. They were tantivy indexes until issue 29: one tantivy search per partition per query, and
another for the fill-in, left hybrid search at a third of dense's speed (bench/RESULTS.md). Each commit appends
the changes to `journal.jsonl` in the folder, with the doc-log offset they reach, so a restart reads the index
back and replays the log from there (applying is idempotent: replaying entries the index holds changes nothing).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from xling.models.index.analysis import base_language, stem, terms, words
from xling.models.index.bm25 import Bm25Partition, StoredTerms, gather_row, top_of_row
from xling.models.index.journal import Journal
from xling.models.index.lexical_ranking import (
    LexicalAnswer,
    LexicalHit,
    ScaledLexical,
    Scored,
    best_first,
)
from xling.models.index.slots import Scalar
from xling.models.language import DETECTOR

log = logging.getLogger(__name__)
JOURNAL_FILE = "journal.jsonl"
COMPACT_SLACK = 10_000  # the journal is rewritten once it holds twice the live documents and this many more
UNDETERMINED = "und"  # the partition of texts whose language nobody gave and detection could not tell


@dataclass(frozen=True)
class LexicalDoc:
    ext_id: str
    text: str
    lang: str | None  # as the caller declared it: what a `langs` filter matches
    metadata: dict[str, Scalar] = field(default_factory=dict)


class LexicalSearch(ABC):
    """What search and fusion ask of a lexical index: the one in this process, or the sparse vectors of a Qdrant
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
    def answer_many(
        self,
        texts: Sequence[str],
        depth: int,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        candidates: Sequence[Sequence[str]],
    ) -> list[LexicalAnswer]:
        """A batch of queries under one filter, in as few calls as the index allows: each query's top `depth` in
        every partition among the documents passing the filter (best first; partitions without a hit left out),
        and the BM25 of its candidates (in any partition, filtered or not) that a query term reaches."""

    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        """Each partition's k best BM25 scores among documents passing the filter, best first, ties by id."""
        tops = self.answer_many([text], k, langs, where, [()])[0].tops
        return {name: best_first(found.hits(name)) for name, found in tops.items()}

    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        """BM25 of these documents for the query (absent: no term matched, or no such document)."""
        known = self.answer_many([text], 0, None, None, [ext_ids])[0].known
        return {hit.ext_id: hit for name, found in known.items() for hit in found.hits(name)}

    def search(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> list[LexicalHit]:
        """The k best BM25 scores among documents passing the filter, over every partition that may hold one."""
        return best_first([hit for hits in self.per_partition(text, k, langs, where).values() for hit in hits])[:k]

    def scaled(
        self, text: str, langs: Sequence[str] | None, where: dict[str, Scalar] | None, per_language: bool,
        first: LexicalAnswer | None = None,
    ) -> ScaledLexical:
        return ScaledLexical(self, text, langs, where, per_language, first)


def partition_of(doc: LexicalDoc) -> str:
    return base_language(doc.lang or DETECTOR.detect(doc.text)) or UNDETERMINED


class LexicalIndex(LexicalSearch):
    """BM25 per language partition, in memory (xling.models.index.bm25), written through to a journal in its
    folder. One applier writes; searches may run on any thread meanwhile (one lock: a write waits for a search's
    sparse products, a few milliseconds)."""

    kind = "replica"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._parts: dict[str, Bm25Partition] = {}
        self._partition_of_id: dict[str, str] = {}
        self._lock = threading.RLock()
        self._journal = Journal(folder / JOURNAL_FILE)
        self._ops: list[list[Any]] = []  # written since the last commit, in order
        self._journaled = 0  # documents the journal holds, live or not (it is rewritten when mostly dead)
        self.applied_offset: str | None = None
        for record in self._journal.read():
            for op in record["ops"]:
                self._apply(op)
            self._journaled += sum(1 for op in record["ops"] if op[0] == "+")
            if record.get("offset") is not None:
                self.applied_offset = str(record["offset"])

    @property
    def partitions(self) -> dict[str, int]:
        """Documents per partition."""
        with self._lock:
            return {name: len(part) for name, part in sorted(self._parts.items()) if len(part)}

    def __len__(self) -> int:
        return len(self._partition_of_id)

    # Writes -------------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[LexicalDoc]) -> None:
        """Each document replaces whatever its id held, in whichever partition that was."""
        ops: list[list[Any]] = []
        for doc in docs:  # analysed before the lock: searches go on meanwhile
            name = partition_of(doc)
            ops.append(["+", doc.ext_id, name, doc.lang, doc.metadata, dict(Counter(terms(doc.text, name)))])
        with self._lock:
            for op in ops:
                self._apply(op)
            self._ops.extend(ops)

    def remove(self, ext_ids: Iterable[str]) -> None:
        with self._lock:
            for ext_id in ext_ids:
                if ext_id in self._partition_of_id:
                    self._apply(["-", ext_id])
                    self._ops.append(["-", ext_id])

    def _apply(self, op: list[Any]) -> None:
        """A journal operation: ["-", id], or ["+", id, partition, declared language, metadata, term counts],
        which replaces what the id held."""
        ext_id = op[1]
        held = self._partition_of_id.pop(ext_id, None)
        if held is not None:
            self._parts[held].remove(ext_id)
        if op[0] == "+":
            _, _, name, lang, metadata, counts = op
            self._parts.setdefault(name, Bm25Partition()).add(StoredTerms(ext_id, lang, metadata, counts))
            self._partition_of_id[ext_id] = name

    def commit(self, applied_offset: str | None) -> None:
        """Write the changes since the last commit to the journal, with the doc-log offset they reach (None: not
        yet at one, as midway through a build). Searches have seen them since they were made."""
        with self._lock:
            if applied_offset is not None:
                self.applied_offset = applied_offset
            if not self._ops and applied_offset is None:
                return
            self._journal.append({"ops": self._ops, "offset": applied_offset})
            self._journaled += sum(1 for op in self._ops if op[0] == "+")
            self._ops = []
            if self._journaled > 2 * len(self) + COMPACT_SLACK:
                self._compact_journal()

    def _compact_journal(self) -> None:
        """The journal rewritten as the live documents alone, with the offset they reach."""
        def records() -> Iterator[dict[str, Any]]:
            ops: list[list[Any]] = []
            for name, part in sorted(self._parts.items()):
                for doc in part.documents():
                    ops.append(["+", doc.ext_id, name, doc.lang, doc.metadata, doc.counts])
                    if len(ops) == 4_096:
                        yield {"ops": ops, "offset": None}
                        ops = []
            yield {"ops": ops, "offset": self.applied_offset}

        self._journal.rewrite(records())
        self._journaled = len(self)

    def close(self) -> None:
        with self._lock:
            self._journal.close()

    def clear(self) -> None:
        """Drop every document (a rebuild from the document store follows)."""
        with self._lock:
            self._parts.clear()
            self._partition_of_id.clear()
            self._ops = []
            self._journal.clear()
            self._journaled = 0
            self.applied_offset = None

    # Search -------------------------------------------------------------------------------------
    def answer_many(
        self,
        texts: Sequence[str],
        depth: int,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        candidates: Sequence[Sequence[str]],
    ) -> list[LexicalAnswer]:
        """One sparse product per partition for the whole batch; each query's top `depth` per partition among
        the filtered documents, and the scores of its candidates (in any partition, filtered or not) a lookup in
        the same product."""
        tops: list[dict[str, Scored]] = [{} for _ in texts]
        known: list[dict[str, Scored]] = [{} for _ in texts]
        # Every query's candidates in one array, with the query each belongs to (ascending), looked up in C loops:
        # a hybrid batch asks about hundreds per query.
        asked_ids = np.empty(sum(len(found) for found in candidates), dtype=object)
        asked_ids[:] = [ext_id for found in candidates for ext_id in found]
        owner = np.repeat(np.arange(len(candidates)), [len(found) for found in candidates])
        with self._lock:
            wanted = self._searched(langs) if depth > 0 else set()
            held_in = np.empty(len(asked_ids), dtype=object)
            held_in[:] = list(map(self._partition_of_id.get, asked_ids))
            for name in sorted(wanted | (set(held_in.tolist()) - {None})):
                part = self._parts[name]
                scores = part.score([_query_terms(text, name) for text in texts])
                if name in wanted:
                    mask = part.mask(langs, where)
                    for row in range(len(texts)):
                        rows, values = top_of_row(scores, row, depth, mask)
                        if len(rows):
                            best = np.argsort(-values, kind="stable")
                            tops[row][name] = Scored(part.id_array[rows[best]], values[best])
                here = np.flatnonzero(held_in == name)
                if len(here):
                    doc_rows = np.fromiter(map(part.row_of.__getitem__, asked_ids[here]), np.int64, len(here))
                    bounds = np.searchsorted(owner[here], np.arange(len(texts) + 1))
                    for row in np.flatnonzero(np.diff(bounds)).tolist():
                        rows_here = doc_rows[bounds[row] : bounds[row + 1]]
                        values = gather_row(scores, row, rows_here)
                        reached = values > 0
                        if reached.any():
                            known[row][name] = Scored(part.id_array[rows_here[reached]], values[reached])
        return [LexicalAnswer(depth, top, found, frozenset(ids))
                for top, found, ids in zip(tops, known, candidates, strict=True)]

    def _searched(self, langs: Sequence[str] | None) -> set[str]:
        """The partitions a filter's documents may sit in: a declared language's sit in its base language's
        partition; undeclared ones never match a `langs` filter."""
        if not langs:
            return set(self._parts)
        return {base_language(lang) or UNDETERMINED for lang in langs} & set(self._parts)


@lru_cache(maxsize=4_096)
def _query_words(text: str) -> list[str]:
    """A query's words, segmented once whichever partitions it is scored in (only stemming differs)."""
    return words(text)


@lru_cache(maxsize=16_384)
def _query_terms(text: str, partition: str) -> tuple[str, ...]:
    """A query's distinct terms in a partition: a hybrid search asks for them in every partition."""
    return tuple(dict.fromkeys(stem(_query_words(text), partition)))

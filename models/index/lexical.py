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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from xling.models.index.analysis import base_language, stem, terms, words
from xling.models.index.bm25 import Bm25Partition, StoredTerms, gather_row, top_of_row
from xling.models.index.journal import Journal
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


class LexicalHit(NamedTuple):  # a tuple: a batch makes tens of thousands of them
    ext_id: str
    score: float  # BM25 in the partition that holds the document
    partition: str


@dataclass(frozen=True)
class Scored:
    """Documents of one partition and their BM25 for one query, as arrays: a batch answers for thousands."""

    ids: np.ndarray  # str
    scores: np.ndarray  # float32

    @staticmethod
    def of_hits(hits: Sequence[LexicalHit]) -> Scored:
        return Scored(np.asarray([hit.ext_id for hit in hits], dtype=object),
                      np.asarray([hit.score for hit in hits], dtype=np.float32))

    def hits(self, partition: str) -> list[LexicalHit]:
        return [LexicalHit(ext_id, score, partition)
                for ext_id, score in zip(self.ids.tolist(), self.scores.tolist(), strict=True)]

    def joined(self, more: Scored) -> Scored:
        return Scored(np.concatenate([self.ids, more.ids]), np.concatenate([self.scores, more.scores]))


@dataclass(frozen=True)
class LexicalAnswer:
    """One query's lexical answer in a batch: each partition's top `depth` among the filtered documents (best
    first), and, per partition, the BM25 of the candidates it was asked about that a term reached."""

    depth: int
    tops: dict[str, Scored]
    known: dict[str, Scored]
    asked: frozenset[str]

    def extended(self, more: LexicalAnswer) -> LexicalAnswer:
        """The same tops, with the scores of more candidates."""
        known = dict(self.known)
        for name, found in more.known.items():
            known[name] = known[name].joined(found) if name in known else found
        return LexicalAnswer(self.depth, self.tops, known, self.asked | more.asked)


def by_partition(hits: Iterable[LexicalHit]) -> dict[str, Scored]:
    grouped: dict[str, list[LexicalHit]] = {}
    for hit in hits:
        grouped.setdefault(hit.partition, []).append(hit)
    return {name: Scored.of_hits(found) for name, found in grouped.items()}


def merged_top(
    parts: dict[str, Scored], depth: int, divisor: Callable[[str], float], ordered: bool = True
) -> list[tuple[str, float]]:
    """The `depth` best of every partition's scores (0: all of them), each divided by its partition's divisor
    (0: scores 0), best first and ties by id (`ordered`, else in no order): the exact merged top when each
    partition holds its own best `depth`."""
    ids, values = [], []
    for name, found in parts.items():
        by = divisor(name)
        ids.append(found.ids[:depth] if depth else found.ids)
        values.append(found.scores[: len(ids[-1])].astype(np.float64) / by if by > 0 else np.zeros(len(ids[-1])))
    if not ids:
        return []
    every, scaled = np.concatenate(ids), np.concatenate(values)
    if 0 < depth < len(scaled):  # keep the depth best and whatever ties the last of them; sort only those
        keep = scaled >= np.partition(scaled, len(scaled) - depth)[len(scaled) - depth]
        every, scaled = every[keep], scaled[keep]
    if not ordered:
        return list(zip(every.tolist(), scaled.tolist(), strict=True))
    order = best_first_order(every, scaled)
    ranked = list(zip(every[order].tolist(), scaled[order].tolist(), strict=True))
    return ranked[:depth] if depth else ranked


def best_first_order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The positions of `scores` best first, ties by id: a numeric sort, then each run of equal scores (rare)
    put in id order, so that no Python comparison runs per element."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])
    start = 0
    while start < len(tied):  # each run of consecutive tied positions: [tied[start], tied[end] + 1]
        end = start
        while end + 1 < len(tied) and tied[end + 1] == tied[end] + 1:
            end += 1
        run = slice(int(tied[start]), int(tied[end]) + 2)
        order[run] = sorted(order[run].tolist(), key=lambda at: ids[at])
        start = end + 1
    return order


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
    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        """Each partition's k best BM25 scores among documents passing the filter (partitions without a hit left
        out), best first."""

    @abstractmethod
    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        """BM25 of these documents for the query (absent: no term matched, or no such document)."""

    def answer_many(
        self,
        texts: Sequence[str],
        depth: int,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        candidates: Sequence[Sequence[str]],
    ) -> list[LexicalAnswer]:
        """A batch of queries under one filter: `per_partition` to `depth` and `scores` of each query's
        candidates. An index that can do better than one query at a time overrides it."""
        answers = []
        for text, asked in zip(texts, candidates, strict=True):
            tops = self.per_partition(text, depth, langs, where) if depth > 0 else {}
            known = self.scores(text, asked).values() if asked else []
            answers.append(LexicalAnswer(depth, {name: Scored.of_hits(hits) for name, hits in tops.items()},
                                         by_partition(known), frozenset(asked)))
        return answers

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
    def per_partition(
        self, text: str, k: int, langs: Sequence[str] | None = None, where: dict[str, Scalar] | None = None
    ) -> dict[str, list[LexicalHit]]:
        tops = self.answer_many([text], k, langs, where, [()])[0].tops
        return {name: best_first(found.hits(name)) for name, found in tops.items()}

    def scores(self, text: str, ext_ids: Sequence[str]) -> dict[str, LexicalHit]:
        known = self.answer_many([text], 0, None, None, [ext_ids])[0].known
        return {hit.ext_id: hit for name, found in known.items() for hit in found.hits(name)}

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


class ScaledLexical:
    """One query's BM25 divided by its best among the filtered documents: the best over all of them, or (with
    `per_language`) the best in each document's language partition, so that no language's documents are lifted
    as a whole. What weighted fusion adds to the cosine (xling.models.index.fusion). `first`: what a batch
    already answered for this query; the index is asked only past it."""

    def __init__(
        self,
        index: LexicalSearch,
        text: str,
        langs: Sequence[str] | None,
        where: dict[str, Scalar] | None,
        per_language: bool,
        first: LexicalAnswer | None = None,
    ) -> None:
        self.index, self.text, self.langs, self.where, self.per_language = index, text, langs, where, per_language
        self.first = first
        self._best: dict[str, float] | None = None  # partition -> the query's best BM25 there
        self._known: dict[str, float] | None = None  # the first answer's candidates, scaled
        if first is not None and first.depth > 0:
            self._best = {name: float(found.scores[0]) for name, found in first.tops.items()}

    def top(self, depth: int) -> list[tuple[str, float]]:
        """The exact `depth` best scaled scores: each partition's best by BM25 are its best scaled, so merging
        every partition's first `depth` and cutting at `depth` misses none."""
        return merged_top(self._tops(depth), depth, self._divisor) if depth > 0 else []

    def every_top(self, depth: int) -> list[tuple[str, float]]:
        """Every partition's `depth` best, scaled, in no order (not cut at `depth`): with `floor`, what weighted
        fusion's threshold algorithm reads as the lexical ranking (it ranks only the hits it returns)."""
        return merged_top(self._tops(depth), 0, self._divisor, ordered=False)

    def floor(self, depth: int) -> float:
        """The highest scaled score a document outside `every_top(depth)` can have: the last of a partition that
        returned `depth` (it may hold more); a partition that returned fewer returned every document a query
        term reaches, so its other documents score 0."""
        tops = self._tops(depth)
        cut = [found.scores[depth - 1] / self._divisor(name) for name, found in tops.items()
               if len(found.ids) >= depth and self._divisor(name) > 0]
        return float(max(cut, default=0.0))

    def _tops(self, depth: int) -> dict[str, Scored]:
        if self.first is not None and 0 < depth <= self.first.depth:
            return {name: Scored(found.ids[:depth], found.scores[:depth]) for name, found in self.first.tops.items()}
        found = self.index.per_partition(self.text, max(depth, 1), self.langs, self.where)
        if self._best is None:
            self._best = {name: hits[0].score for name, hits in found.items()}
        return {name: Scored.of_hits(hits) for name, hits in found.items()}

    def of(self, ext_ids: Sequence[str]) -> dict[str, float]:
        if self._best is None:
            self.top(1)
        asked = self.first.asked if self.first is not None else frozenset()
        if self._known is None:
            self._known = {}
            for name, known in (self.first.known if self.first is not None else {}).items():
                by = self._divisor(name)
                scaled = known.scores.astype(np.float64) / by if by > 0 else np.zeros(len(known.ids))
                self._known.update(zip(known.ids.tolist(), scaled.tolist(), strict=True))
        found = {ext_id: self._known[ext_id] for ext_id in ext_ids if ext_id in self._known}
        rest = [ext_id for ext_id in ext_ids if ext_id not in asked]
        if rest:
            found.update({ext_id: self._scale(hit) for ext_id, hit in self.index.scores(self.text, rest).items()})
        return found

    def _divisor(self, partition: str) -> float:
        """What a partition's BM25 is divided by: the query's best there, or its best over all partitions."""
        assert self._best is not None
        return self._best.get(partition, 0.0) if self.per_language else max(self._best.values(), default=0.0)

    def _scale(self, hit: LexicalHit) -> float:
        by = self._divisor(hit.partition)
        return hit.score / by if by > 0 else 0.0


@lru_cache(maxsize=4_096)
def _query_words(text: str) -> list[str]:
    """A query's words, segmented once whichever partitions it is scored in (only stemming differs)."""
    return words(text)


@lru_cache(maxsize=16_384)
def _query_terms(text: str, partition: str) -> tuple[str, ...]:
    """A query's distinct terms in a partition: a hybrid search asks for them in every partition."""
    return tuple(dict.fromkeys(stem(_query_words(text), partition)))


def best_first(hits: list[LexicalHit]) -> list[LexicalHit]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.ext_id))

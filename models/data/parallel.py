"""Parallel QA training data: groups of one question and its answer passage in several languages.

Two formats load into the same `ParallelGroup`s:
- a LAReQA/SQuAD folder: one `<lang>.json` per language, question ids shared across languages; the
  passage is the answer-bearing sentence (the `sentence_breaks` span holding `answer_start`),
  optionally followed by its paragraph;
- JSONL groups: `{"id": .., "query": {lang: text}, "passage": {lang: text}}` per line.
"""


from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xling.models.data.text import LANG_FILE, DataError, jsonl_objects, read_json_file


@dataclass
class ParallelGroup:
    id: str
    queries: dict[str, str]
    passages: dict[str, str]
    cross_only: bool = False  # bitext: the two sides are translations, not a question and its answer
    source: str = ""  # the dataset it came from (what data mixing shares out cross-lingual batches by)

    def mono_langs(self) -> list[str]:
        """Languages with both a query and a passage (usable in a monolingual batch)."""
        if self.cross_only:
            return []
        return sorted(set(self.queries) & set(self.passages))

    def cross_pairs(self) -> list[tuple[str, str]]:
        """(query language, passage language) pairs with the two different and both present."""
        return [(q, p) for q in sorted(self.queries) for p in sorted(self.passages) if q != p]


@dataclass
class DatasetSummary:
    groups: int
    languages: list[str]
    groups_per_language: dict[str, int]
    cross_pairs: dict[str, int] = field(default_factory=dict)  # "de->en": groups offering that pair
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count of questions left out

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "languages": self.languages,
            "groups_per_language": self.groups_per_language,
            "cross_pairs": self.cross_pairs,
            "skipped": self.skipped,
        }


def _languages(group: ParallelGroup) -> list[str]:
    return sorted(set(group.queries) | set(group.passages)) if group.cross_only else group.mono_langs()


def summarize(groups: list[ParallelGroup], skipped: dict[str, int] | None = None) -> DatasetSummary:
    per_lang: Counter[str] = Counter(lang for g in groups for lang in _languages(g))
    pairs: Counter[str] = Counter(f"{q}->{p}" for g in groups for q, p in g.cross_pairs())
    return DatasetSummary(
        groups=len(groups),
        languages=sorted(per_lang),
        groups_per_language=dict(sorted(per_lang.items())),
        cross_pairs=dict(sorted(pairs.items())),
        skipped=dict(skipped or {}),
    )


def _answer_sentence(context: str, breaks: list[Any], answer_start: int, where: str) -> str | None:
    for b, span in enumerate(breaks):
        _require(
            isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span),
            where,
            f"sentence_breaks[{b}] must be a [start, end] pair of integers",
        )
        start, end = span
        if start <= answer_start < end:
            return context[start:end].strip()
    return None


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise DataError(f"{where}: {message}")


def _list(value: Any, where: str, message: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataError(f"{where}: {message}")
    return value


def _answer_start(qa: dict[str, Any], where: str) -> int:
    answers = _list(qa.get("answers"), where, "has no answers")
    _require(bool(answers), where, "has no answers")
    first = answers[0]
    _require(isinstance(first, dict) and "answer_start" in first, where, "answers[0] has no 'answer_start'")
    start = first["answer_start"]
    # A JSON number, or a string holding one (some exports quote it); anything else is refused, not guessed.
    if isinstance(start, str) and start.strip().isdigit():
        start = int(start)
    _require(isinstance(start, int) and not isinstance(start, bool), where, f"answer_start {start!r} is not a number")
    return int(start)


def load_lareqa_folder(folder: Path, with_context: bool = False) -> tuple[list[ParallelGroup], dict[str, int]]:
    """Groups from a LAReQA folder, plus counts of questions skipped (answer outside every sentence)."""
    files = sorted(p for p in folder.glob("*.json") if LANG_FILE.match(p.stem))
    if not files:
        raise DataError(f"{folder}: no <lang>.json files (expected e.g. en.json, de.json)")
    groups: dict[str, ParallelGroup] = {}
    skipped: Counter[str] = Counter()
    for file in files:
        lang = file.stem
        document = read_json_file(file)
        articles = document.get("data") if isinstance(document, dict) else None
        for a, article in enumerate(_list(articles, str(file), "expected an object with a 'data' list (SQuAD layout)")):
            paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
            for p, paragraph in enumerate(_list(paragraphs, f"{file}: data[{a}]", "has no 'paragraphs' list")):
                where = f"{file}: data[{a}].paragraphs[{p}]"
                _require(isinstance(paragraph, dict), where, "is not an object")
                context, breaks, qas = (paragraph.get(k) for k in ("context", "sentence_breaks", "qas"))
                _require(isinstance(context, str), where, "needs a 'context' string")
                breaks = _list(breaks, where, "needs a 'sentence_breaks' list")
                for q, qa in enumerate(_list(qas, where, "needs a 'qas' list")):
                    qa_where = f"{where}.qas[{q}]"
                    _require(
                        isinstance(qa, dict) and "id" in qa and "question" in qa, qa_where, "needs 'id' and 'question'"
                    )
                    sentence = _answer_sentence(context, breaks, _answer_start(qa, qa_where), where)
                    if not sentence:
                        skipped["answer outside every sentence"] += 1
                        continue
                    passage = f"{sentence} {context.strip()}" if with_context else sentence
                    group = groups.setdefault(str(qa["id"]), ParallelGroup(str(qa["id"]), {}, {}))
                    group.queries[lang] = str(qa["question"]).strip()
                    group.passages[lang] = passage
    return list(groups.values()), dict(skipped)


def load_jsonl_groups(file: Path) -> list[ParallelGroup]:
    groups: list[ParallelGroup] = []
    seen: set[str] = set()
    for where, row in jsonl_objects(file, "id, query and passage"):
        for key in ("id", "query", "passage"):
            _require(key in row, where, f"missing '{key}'")
        for key in ("query", "passage"):
            texts = row[key]
            _require(isinstance(texts, dict) and bool(texts), where, f"'{key}' must be a non-empty {{lang: text}}")
            for lang, text in texts.items():
                _require(bool(LANG_FILE.match(lang)), where, f"'{key}' has a bad language code {lang!r}")
                _require(isinstance(text, str) and bool(text.strip()), where, f"'{key}.{lang}' is empty")
        group_id = str(row["id"])
        _require(group_id not in seen, where, f"id {group_id!r} appears twice")
        seen.add(group_id)
        lacking = sorted(set(row["query"]) - set(row["passage"]))
        _require(not lacking, where, f"group {group_id!r} has a query in {lacking} but no passage in it")
        groups.append(ParallelGroup(group_id, dict(row["query"]), dict(row["passage"])))
    if not groups:
        raise DataError(f"{file}: no groups")
    return groups


def load_parallel(path: Path, with_context: bool = False) -> tuple[list[ParallelGroup], DatasetSummary]:
    """A LAReQA folder, a JSONL file, or a folder holding one JSONL file."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        jsonl = sorted(path.glob("*.jsonl"))
        if jsonl and not any(path.glob("*.json")):
            groups = [g for file in jsonl for g in load_jsonl_groups(file)]
            return groups, summarize(groups)
        groups, skipped = load_lareqa_folder(path, with_context)
        return groups, summarize(groups, skipped)
    groups = load_jsonl_groups(path)
    return groups, summarize(groups)


def fingerprint(groups: list[ParallelGroup]) -> str:
    """Content hash of the data (order-independent), recorded in a trained model's manifest."""
    digest = hashlib.sha256()
    for group in sorted(groups, key=lambda g: g.id):
        digest.update(json.dumps([group.id, group.queries, group.passages], sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _split_one(
    groups: list[ParallelGroup], val_fraction: float, seed: int, minimum: int = 0
) -> tuple[list[ParallelGroup], list[ParallelGroup]]:
    order = sorted(groups, key=lambda g: g.id)
    random.Random(seed).shuffle(order)
    n_val = max(round(len(order) * val_fraction), minimum if val_fraction > 0 else 0)
    return order[n_val:], order[:n_val]


def split(
    groups: list[ParallelGroup], val_fraction: float, seed: int
) -> tuple[list[ParallelGroup], list[ParallelGroup]]:
    """Split by group (never one translation in train and another in validation). With several datasets, each
    gives `val_fraction` of its own groups (at least one, if it has two), so a few hundred pairs of a rare
    language beside thousands of QA groups still have a validation share of their own."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    sources = sorted({g.source for g in groups})
    if len(sources) > 1:
        train, val = [], []
        for source in sources:
            own = [g for g in groups if g.source == source]
            part_train, part_val = _split_one(own, val_fraction, seed, minimum=1 if len(own) > 1 else 0)
            train += part_train
            val += part_val
    else:
        train, val = _split_one(groups, val_fraction, seed)
    if not train:
        raise DataError(f"a validation fraction of {val_fraction} leaves no training groups out of {len(groups)}")
    if val_fraction > 0 and not val:
        raise DataError(f"a validation fraction of {val_fraction} leaves no validation groups out of {len(groups)}")
    return train, val


@dataclass(frozen=True)
class TrainingShape:
    """What a sampling strategy needs to know of its data: read off the groups, or off the summaries stored when
    the datasets were uploaded (so a job is checked without parsing its data again)."""

    groups: int
    bitext_groups: int  # cross-lingual only: the two sides are translations, not a question and its answer
    has_mono: bool  # a group with a query and a passage in one language
    has_cross: bool  # a group with a query and a passage in two languages
    languages: list[str]


def shape_of(groups: list[ParallelGroup]) -> TrainingShape:
    return TrainingShape(
        groups=len(groups),
        bitext_groups=sum(g.cross_only for g in groups),
        has_mono=any(g.mono_langs() for g in groups),
        has_cross=any(g.cross_pairs() for g in groups),
        languages=sorted({lang for g in groups for lang in (*g.queries, *g.passages)}),
    )


def check_strategy(groups: list[ParallelGroup], strategy: str, alpha: float = 0.5) -> None:
    """Refuse a strategy the data cannot serve, before any training starts."""
    check_shape(shape_of(groups), strategy, alpha)


def check_shape(shape: TrainingShape, strategy: str, alpha: float = 0.5) -> None:
    """`check_strategy` on the shape of the data."""
    needs_mono = strategy == "monolingual" or (strategy == "hybrid" and alpha > 0)
    needs_cross = strategy == "crosslingual" or (strategy == "hybrid" and alpha < 1)
    if not needs_cross and shape.bitext_groups:
        raise DataError(
            f"strategy {strategy!r}" + (f" with alpha {alpha:g}" if strategy == "hybrid" else "")
            + " makes only monolingual batches and cannot use bitext pairs (they are cross-lingual only): "
            "use crosslingual or hybrid"
        )
    if needs_mono and shape.groups and shape.bitext_groups == shape.groups:
        raise DataError(
            f"strategy {strategy!r} needs monolingual batches, and bitext pairs are cross-lingual only: "
            "use crosslingual, or train beside a parallel QA dataset"
        )
    if needs_mono and not shape.has_mono:
        raise DataError(f"strategy {strategy!r} needs groups with a query and a passage in the same language")
    if needs_cross and not shape.has_cross:
        langs = shape.languages
        raise DataError(f"strategy {strategy!r} needs groups in at least two languages; the data has {langs or 'none'}")


def all_pairs(groups: list[ParallelGroup]) -> list[tuple[int, str, str]]:
    """Every (group index, query language, passage language) a sampler may draw."""
    rows: list[tuple[int, str, str]] = []
    for index, group in enumerate(groups):
        rows.extend((index, lang, lang) for lang in group.mono_langs())
        rows.extend((index, q, p) for q, p in group.cross_pairs())
    return rows

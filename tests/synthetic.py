"""Synthetic parallel QA data: each language has its own word for each concept, so an untrained
model can only match a query to a passage in its own language (shared words), and cross-lingual
retrieval has to be learned."""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.tiny_model import random_sentences
from xling.state.docstore import StoredDoc

LANGS = ["en", "de", "fr", "es"]
CONCEPTS = 60


def word(lang: str, concept: int) -> str:
    return f"{lang}{concept:02d}w"


def vocabulary_texts() -> list[str]:
    """Texts for training the test tokenizer, so every synthetic word is one token."""
    return [" ".join(word(lang, c) for c in range(CONCEPTS)) for lang in LANGS]


def make_groups(count: int, seed: int, langs: list[str] | None = None, missing_rate: float = 0.0) -> list[dict]:
    """JSONL-style groups: a query of 3 concepts; the passage holds them plus 3 others."""
    rng = random.Random(seed)
    langs = langs or LANGS
    groups = []
    for i in range(count):
        asked = rng.sample(range(CONCEPTS), 3)
        extra = rng.sample([c for c in range(CONCEPTS) if c not in asked], 3)
        present = [lang for lang in langs if rng.random() >= missing_rate] or [langs[0]]
        queries = {lang: " ".join(word(lang, c) for c in asked) for lang in present}
        passages = {lang: " ".join(word(lang, c) for c in rng.sample(asked + extra, 6)) for lang in present}
        groups.append({"id": f"g{i}", "query": queries, "passage": passages})
    return groups


def write_jsonl(path: Path, groups: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(g) + "\n" for g in groups))
    return path


def write_lareqa(folder: Path, groups: list[dict], filler_sentences: int = 1) -> Path:
    """The same groups as a LAReQA folder: one paragraph per group and language, the answer
    sentence among `filler_sentences` others, `sentence_breaks` and `answer_start` as in XQuAD-R."""
    folder.mkdir(parents=True, exist_ok=True)
    langs = sorted({lang for g in groups for lang in g["query"]})
    for lang in langs:
        paragraphs = []
        for index, group in enumerate(groups):
            if lang not in group["query"]:
                continue
            fillers = [f"{word(lang, (index + k) % CONCEPTS)} filler{k}" for k in range(filler_sentences)]
            sentences = [*fillers[:1], group["passage"][lang], *fillers[1:]]
            context, breaks = "", []
            for sentence in sentences:
                start = len(context) + (1 if context else 0)
                context = f"{context} {sentence}" if context else sentence
                breaks.append([start, start + len(sentence)])
            answer_sentence = 1 if fillers else 0
            answer_start = breaks[answer_sentence][0] + 1
            qa = {
                "id": group["id"],
                "question": group["query"][lang],
                "answers": [{"text": "x", "answer_start": answer_start}],
            }
            paragraphs.append({"context": context, "sentence_breaks": breaks, "qas": [qa]})
        (folder / f"{lang}.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    return folder


def corpus(per_lang: int = 25) -> list[dict[str, Any]]:
    """Documents for a service: `per_lang` random sentences in each of LANGS, with a parity metadata value."""
    docs = []
    for lang in LANGS:
        for i, text in enumerate(random_sentences(lang, per_lang, seed=zlib.crc32(lang.encode()) % 1000)):
            docs.append({"id": f"{lang}-{i}", "text": text, "lang": lang, "metadata": {"parity": i % 2}})
    return docs


def smooth_fake_encoder(texts: list[str], kind: str, langs: object = None) -> np.ndarray:
    """Deterministic; words shared across a query and its passage pull them together."""
    rows = []
    for text in texts:
        vector = np.zeros(16, dtype=np.float32)
        for word in text.split():
            seed = int.from_bytes(hashlib.sha256(word[2:].encode()).digest()[:4], "big")  # language-blind part
            vector += np.random.default_rng(seed).standard_normal(16).astype(np.float32)
        rows.append(vector + 1e-3)
    vectors = np.stack(rows)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class DictCorpus:
    """A corpus (state.docstore.Corpus) in a dict, for what reads documents without needing Redis."""

    def __init__(self, docs: dict[str, StoredDoc]) -> None:
        self.docs = docs

    def start_offset(self) -> str:
        return "0-0"

    def iter_all(self, chunk: int = 1_000) -> Iterator[list[tuple[str, StoredDoc]]]:
        items = list(self.docs.items())
        for start in range(0, len(items), chunk):
            yield items[start : start + chunk]

    def get_many(self, ids: Sequence[str]) -> dict[str, StoredDoc]:
        return {i: self.docs[i] for i in ids if i in self.docs}

    def count(self) -> int:
        return len(self.docs)

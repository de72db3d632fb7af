"""Evaluate an encoder on LAReQA sets and bitext pairs: encode each distinct text once, then score."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bitext import bitext_metrics, load_bitext
from models.encoder import EncodeFn, TextKind
from models.lareqa import LareqaData, LareqaResult, lareqa_metrics, load_lareqa


def encode_distinct(encode: EncodeFn, texts: list[str], kind: TextKind) -> np.ndarray:
    """Encode each distinct text once (LAReQA repeats sentences and questions) and spread the rows back."""
    unique = list(dict.fromkeys(texts))
    vectors = encode(unique, kind)
    position = {text: i for i, text in enumerate(unique)}
    return vectors[[position[text] for text in texts]]


@dataclass
class LareqaEvaluation:
    name: str
    data_size: str
    result: LareqaResult
    encode_seconds: float
    metric_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": self.data_size,
            **self.result.to_dict(),
            "timing": {
                "encode_seconds": round(self.encode_seconds, 2),
                "metric_seconds": round(self.metric_seconds, 2),
            },
        }


@dataclass
class EvaluationReport:
    model_version: str
    lareqa: list[LareqaEvaluation] = field(default_factory=list)
    bitext: dict[str, Any] | None = None

    def primary(self) -> float:
        """The primary metric of the first LAReQA set (what `deploy: if_better` compares)."""
        if not self.lareqa:
            raise ValueError("no LAReQA evaluation to take a primary metric from")
        first = self.lareqa[0].result
        return first.metrics[first.primary_metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "lareqa": [e.to_dict() for e in self.lareqa],
            "bitext": self.bitext,
        }


def evaluate_lareqa(encode: EncodeFn, data: LareqaData, name: str) -> LareqaEvaluation:
    started = time.perf_counter()
    candidates = encode_distinct(encode, data.candidate_texts, "passage")
    queries = encode_distinct(encode, data.question_texts, "query")
    encoded = time.perf_counter()
    result = lareqa_metrics(data, queries, candidates)
    return LareqaEvaluation(name, data.size, result, encoded - started, time.perf_counter() - encoded)


def evaluate(
    encode: EncodeFn,
    model_version: str,
    lareqa_dirs: list[Path] | None = None,
    bitext_dir: Path | None = None,
    langs: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    report = EvaluationReport(model_version)
    for folder in lareqa_dirs or []:
        if progress:
            progress(f"LAReQA {folder.name}")
        report.lareqa.append(evaluate_lareqa(encode, load_lareqa(folder, langs), folder.name))
    if bitext_dir is not None:
        if progress:
            progress(f"bitext {bitext_dir.name}")
        report.bitext = bitext_metrics(load_bitext(bitext_dir, langs), encode)
    return report


def folder_fingerprint(folder: Path) -> str:
    """Content hash of an evaluation folder's files, recorded in reports."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]

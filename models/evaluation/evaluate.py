"""Evaluate an encoder on LAReQA sets and bitext pairs: encode each distinct text once, then score."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xling.models.centering import center, language_means
from xling.models.data.bitext import is_bitext, load_bitext
from xling.models.data.lareqa import LareqaData, load_lareqa
from xling.models.encoder import EncodeFn, TextKind
from xling.models.evaluation.bitext import bitext_metrics
from xling.models.evaluation.lareqa import LareqaResult, lareqa_metrics
from xling.models.evaluation.modes import RetrievalMode, lexical_matrix, rescorer


def encode_distinct(encode: EncodeFn, texts: list[str], kind: TextKind, langs: list[str]) -> np.ndarray:
    """Encode each distinct (text, language) once (LAReQA repeats sentences and questions) and spread the rows
    back; the language routes a text to its adapter."""
    keys = list(zip(texts, langs, strict=True))
    unique = list(dict.fromkeys(keys))
    vectors = encode([text for text, _ in unique], kind, [lang for _, lang in unique])
    position = {key: i for i, key in enumerate(unique)}
    return vectors[[position[key] for key in keys]]


@dataclass(frozen=True)
class EvalSet:
    """A named evaluation set: a LAReQA folder, or bitext (Tatoeba folder or JSONL)."""

    name: str
    path: Path
    kind: Literal["lareqa", "bitext"]


def eval_set(path: Path, name: str | None = None, kind: Literal["lareqa", "bitext"] | None = None) -> EvalSet:
    """Name it after its folder (or file stem) unless told; recognise bitext by its files unless told."""
    found = kind or ("bitext" if is_bitext(path) else "lareqa")
    return EvalSet(name or path.name.removesuffix(".jsonl"), path, found)


@dataclass
class BitextEvaluation:
    name: str
    result: dict[str, Any]  # models.bitext.bitext_metrics

    @property
    def accuracy(self) -> float:
        return float(self.result["bitext_acc@1"])

    @property
    def centred_accuracy(self) -> float | None:
        centred = self.result.get("centred")
        return None if centred is None else float(centred["bitext_acc@1"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.result}


@dataclass
class LareqaEvaluation:
    name: str
    data_size: str
    result: LareqaResult
    encode_seconds: float
    metric_seconds: float
    centred: LareqaResult | None = None  # the same vectors, centred per language (models/centering.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": self.data_size,
            **self.result.to_dict(),
            **({"centred": self.centred.to_dict()} if self.centred is not None else {}),
            "timing": {
                "encode_seconds": round(self.encode_seconds, 2),
                "metric_seconds": round(self.metric_seconds, 2),
            },
        }


@dataclass
class EvaluationReport:
    model_version: str
    lareqa: list[LareqaEvaluation] = field(default_factory=list)
    bitext: list[BitextEvaluation] = field(default_factory=list)
    retrieval: str = "dense"  # the retrieval mode the sets were scored with (RetrievalMode.label)

    def score(self, on: str | None = None, centred: bool = False) -> tuple[str, float]:
        """What `deploy: if_better` compares: (metric name, value).

        `on` None: the primary metric (Multi mAP) averaged over the LAReQA sets. `on` a set's name: that
        LAReQA set's primary metric, or that bitext set's accuracy@1 (both directions, macro). `centred`: as
        scored with per-language centring (the evaluation must have computed it).
        """
        metrics = self.set_metrics(centred)
        if on is None:
            if not self.lareqa:
                raise ValueError("no LAReQA set to compare on; name a bitext set to compare on instead")
            primary = self.lareqa[0].result.primary_metric
            return primary, float(np.mean([metrics[ev.name][primary] for ev in self.lareqa]))
        for ev in self.lareqa:
            if ev.name == on:
                return ev.result.primary_metric, metrics[on][ev.result.primary_metric]
        for bt in self.bitext:
            if bt.name == on:
                return "bitext_acc@1", metrics[on]["bitext_acc@1"]
        raise ValueError(f"no evaluation set named {on!r}")

    def primary(self) -> float:
        return self.score()[1]

    def set_metrics(self, centred: bool = False) -> dict[str, dict[str, float]]:
        """Headline metrics per set name: LAReQA summary metrics, bitext accuracy@1; `centred`: as scored with
        per-language centring."""
        found: dict[str, dict[str, float]] = {}
        for ev in self.lareqa:
            result = ev.centred if centred else ev.result
            if result is None:
                raise ValueError(f"{ev.name} was not scored with centring")
            found[ev.name] = dict(result.metrics)
        for bt in self.bitext:
            accuracy = bt.centred_accuracy if centred else bt.accuracy
            if accuracy is None:
                raise ValueError(f"{bt.name} was not scored with centring")
            found[bt.name] = {"bitext_acc@1": accuracy}
        return found

    def flat_metrics(self, centred: bool = False) -> dict[str, float]:
        """`set_metrics` as {"<set>:<metric>": value}: the names guards and job outcomes use."""
        return {f"{name}:{k}": v for name, values in self.set_metrics(centred).items() for k, v in values.items()}

    def job_metrics(self, with_centred: bool) -> dict[str, float]:
        """What a job reports: "<set>:<metric>", and "<set>:centred:<metric>" when scored centred too."""
        found = self.flat_metrics()
        if with_centred:
            found.update({f"{name}:centred:{k}": v for name, values in self.set_metrics(True).items()
                          for k, v in values.items()})
        return found

    def language_accuracy(self, lang: str) -> dict[str, Any]:
        """accuracy@1 of every bitext pair with `lang`, per set (both directions and their mean; centred too when
        scored so): what a language's adapter is judged by."""
        found: dict[str, Any] = {}
        for bt in self.bitext:
            rows = {"raw": bt.result["pairs"], "centred": bt.result.get("centred", {}).get("pairs", [])}
            for kind, pairs in rows.items():
                for row in pairs:
                    if lang in (row["src"], row["tgt"]):
                        keep = {k: v for k, v in row.items() if "->" in k or k in ("mean", "lines")}
                        found.setdefault(bt.name, {}).setdefault(row["pair"], {})[kind] = keep
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "retrieval": self.retrieval,
            "lareqa": [e.to_dict() for e in self.lareqa],
            "bitext": [b.to_dict() for b in self.bitext],
        }


def evaluate_lareqa(
    encode: EncodeFn, data: LareqaData, name: str, centering: bool = False, mode: RetrievalMode | None = None
) -> LareqaEvaluation:
    """LAReQA metrics; with `centering`, also with every vector centred on its language's mean, estimated on the
    set's own candidate pool (as a service estimates it on the corpus it holds). Queries are centred on the
    candidate mean of their own language. `mode`: lexical or fused retrieval instead of dense."""
    started = time.perf_counter()
    candidate_langs = [data.languages[i] for i in data.candidate_langs]
    question_langs = [data.languages[i] for i in data.question_langs]
    candidates = encode_distinct(encode, data.candidate_texts, "passage", candidate_langs)
    queries = encode_distinct(encode, data.question_texts, "query", question_langs)
    encoded = time.perf_counter()
    rescore = None
    if mode is not None and mode.mode != "dense":
        rescore = rescorer(mode, lexical_matrix(data), data.candidate_langs)
    result = lareqa_metrics(data, queries, candidates, rescore=rescore)
    centred = None
    if centering:
        means = language_means(candidates, candidate_langs)
        centred = lareqa_metrics(
            data, center(queries, question_langs, means), center(candidates, candidate_langs, means), rescore=rescore
        )
    return LareqaEvaluation(name, data.size, result, encoded - started, time.perf_counter() - encoded, centred)


def evaluate(
    encode: EncodeFn,
    model_version: str,
    sets: list[EvalSet],
    langs: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    centering: bool = False,
    mode: RetrievalMode | None = None,
) -> EvaluationReport:
    """Every set scored; with `centering`, every set also scored centred per language (`evaluate_lareqa`,
    `bitext_metrics`); with `mode`, by lexical or fused retrieval instead of dense."""
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation set names must differ: {names}")
    report = EvaluationReport(model_version, retrieval=(mode or RetrievalMode()).label)
    for item in sets:
        if progress:
            progress(f"{'LAReQA' if item.kind == 'lareqa' else 'bitext'} {item.name}")
        if item.kind == "lareqa":
            report.lareqa.append(evaluate_lareqa(encode, load_lareqa(item.path, langs), item.name, centering, mode))
        else:
            pairs = load_bitext(item.path, langs)
            report.bitext.append(
                BitextEvaluation(item.name, bitext_metrics(pairs, encode, centering=centering, mode=mode))
            )
    return report


def folder_fingerprint(folder: Path) -> str:
    """Content hash of an evaluation folder's files, recorded in reports."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]

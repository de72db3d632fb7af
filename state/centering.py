"""Serving-side centring (models/centering.py does the arithmetic): where a version's means live, calibrating
them on the served corpus, the languages of documents and queries, and how far the corpus has drifted since.

Policy (README, "Centring"; numbers in bench/RESULTS.md):
- A version's means are calibrated once, from a sample of the served corpus (up to `centering_sample_per_lang`
  documents per language), when its index is first built on a corpus where some language has
  `centering_min_docs` documents; until then it serves uncentred. Then they are frozen: the index holds vectors
  centred with them, and its snapshot folder is named after them (`snapshot_folder`), so every replica and
  every restart pairs the index with the means it was built with.
- Each api counts what it applies after that (`DriftTracker`). When a language without a mean reaches
  `centering_min_docs` documents, or a language's mean would move by more than `centering_drift_threshold` of
  its length, it advises recalibration; the api queues one `reindex` job with `recalibrate` (the worker samples
  again, writes new means, re-encodes into a new snapshot, and every api swaps to it like to a new model).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xling.models.adapters.bundle import adapter_lineage
from xling.models.centering import CENTERING_FILE, Centering, calibrate, language_means
from xling.models.encoder import Encoder, TextKind, encode_in_steps
from xling.models.files import write_json_atomic
from xling.models.language import DETECTOR, LanguageDetector
from xling.state.docstore import Corpus, StoredDoc
from xling.state.settings import Settings


def centering_folder(settings: Settings, version: str) -> Path:
    """Beside the version's xling.json when it is a registry version; else (the configured default served from
    its own folder) under DATA_DIR/centering/<version>/."""
    registry_folder = settings.models_dir / version
    if (registry_folder / "xling.json").is_file():
        return registry_folder
    return settings.data_dir / "centering" / version


def load_centering(settings: Settings, version: str) -> Centering | None:
    """The version's current means; None when centring is off or the version was never calibrated."""
    if not settings.centering:
        return None
    return Centering.load(centering_folder(settings, version))


def centering_stamp(settings: Settings, version: str) -> tuple[int, int] | None:
    """(mtime, size) of the means file: a cheap test, each poll, of whether another process replaced it."""
    try:
        stat = (centering_folder(settings, version) / CENTERING_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def save_first(centering: Centering, folder: Path) -> Centering:
    """Write the means unless another replica already has: the first file wins, and the winner's means are
    returned, so replicas that calibrate at the same time still serve the same means."""
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{CENTERING_FILE}.{os.getpid()}.{threading.get_ident()}"
    write_json_atomic(temporary, centering.to_dict())
    try:
        os.link(temporary, folder / CENTERING_FILE)  # fails if the file exists: no replica overwrites another
        return centering
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
        existing = Centering.load(folder)
        assert existing is not None
        return existing
    finally:
        temporary.unlink(missing_ok=True)


def snapshot_folder(indexes_dir: Path, version: str, centering: Centering | None) -> Path:
    """indexes/<version>/ for an uncentred index; indexes/<version>/centred-<means id>/ for a centred one."""
    base = indexes_dir / version
    return base if centering is None else base / f"centred-{centering.id}"


def document_languages(docs: Sequence[StoredDoc], detector: LanguageDetector = DETECTOR) -> list[str | None]:
    """Each document's `lang`, or the detected one when it was indexed without (`detector`: the serving
    version's, which knows its adapters' languages)."""
    return [doc.lang or detector.detect(doc.text) for doc in docs]


@dataclass(frozen=True)
class TextLanguage:
    """Where a text goes at serving time."""

    adapter: str | None  # the adapter that encodes it (None: the shared weights)
    centre: str | None  # the language whose mean centres it (None: the global query mean, or a document's fallback)


def query_language(text: str, given: str | None, encoder: Encoder, centering: Centering | None) -> TextLanguage:
    """Where a query goes: its given language; else, from one detection over every language the version knows,
    its adapter when the likeliest language has one, and for centring that language or the likeliest among those
    with a mean. No detection when nothing depends on it."""
    if given:
        return TextLanguage(encoder.adapter_for(given), given)
    if not encoder.adapters and centering is None:
        return TextLanguage(None, None)
    ranking = encoder.detector.ranked(text)
    adapter = encoder.adapter_for(ranking[0]) if ranking else None
    if adapter is not None:
        return TextLanguage(adapter, adapter)
    means = centering.means if centering is not None else {}
    return TextLanguage(None, next((lang for lang in ranking if lang in means), None))


# (step, done, total): "sampling" (documents read of the corpus), "passages" and "queries" (sample texts encoded)
CalibrationProgress = Callable[[str, int, int], None]


def sample_corpus(reader: Corpus, per_lang: int, detector: LanguageDetector = DETECTOR,
                  only: Collection[str] | None = None, progress: CalibrationProgress | None = None
                  ) -> tuple[list[tuple[str, str, str]], int]:
    """Up to `per_lang` documents of each language (of `only`'s, when given) as (id, language, text), and how
    many documents there are."""
    taken: dict[str, int] = {}
    sample: list[tuple[str, str, str]] = []
    total = 0
    expected = reader.count() if progress is not None else 0
    for docs in reader.iter_all(2_048):
        total += len(docs)
        for (doc_id, doc), lang in zip(docs, document_languages([d for _, d in docs], detector), strict=True):
            if lang is not None and taken.get(lang, 0) < per_lang and (only is None or lang in only):
                taken[lang] = taken.get(lang, 0) + 1
                sample.append((doc_id, lang, doc.text))
        if progress is not None:
            progress("sampling", total, max(total, expected))
    return sample, total


def calibrate_corpus(reader: Corpus, encoder: Encoder, settings: Settings,
                     progress: CalibrationProgress | None = None) -> Centering | None:
    """Means from a sample of the served corpus; None while no language has enough documents. `progress` hears
    each step as it goes (a large corpus on a slow machine takes minutes)."""
    sample, total = sample_corpus(reader, settings.centering_sample_per_lang, encoder.detector, progress=progress)
    return calibrate_sample(sample, total, encoder, settings, progress)


def calibrate_sample(sample: list[tuple[str, str, str]], corpus_size: int, encoder: Encoder, settings: Settings,
                     progress: CalibrationProgress | None = None, passages: np.ndarray | None = None,
                     queries_per_lang: int | None = None) -> Centering | None:
    """Means from a drawn sample (models.centering.calibrate: `passages` when its vectors are at hand); None while
    no language has `centering_min_docs` documents in it."""
    counts: dict[str, int] = {}
    for _, lang, _ in sample:
        counts[lang] = counts.get(lang, 0) + 1
    if not any(n >= settings.centering_min_docs for n in counts.values()):
        return None

    def encoded(kind: TextKind, done: int, texts: int) -> None:
        if progress is not None:
            progress(f"{kind}s", done, texts)

    return calibrate(encode_in_steps(encoder.encode, encoder.dim, encoded), sample, model_version=encoder.version,
                     min_count=settings.centering_min_docs, corpus_size=corpus_size, passages=passages,
                     queries_per_lang=queries_per_lang)


def uncalibrated_status(declared: dict[str, int], total: int, min_docs: int) -> dict[str, Any]:
    """An index served uncentred (no means yet): calibrate once a declared language, or the documents without
    one (their languages are detected when calibrating), reach `min_docs`."""
    undeclared = total - sum(declared.values())
    reasons = [f"{lang} has {n} documents" for lang, n in sorted(declared.items()) if n >= min_docs]
    if undeclared >= min_docs:
        reasons.append(f"{undeclared} documents without a language")
    return {"documents": {**declared, **({"unknown": undeclared} if undeclared else {})},
            "recalibrate": bool(reasons), "reasons": reasons}


@dataclass
class DriftTracker:
    """Running sums, per language, of the raw vectors of documents applied after the means were calibrated."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, vectors: np.ndarray, langs: Sequence[str | None]) -> None:
        with self._lock:
            for row, lang in enumerate(langs):
                key = lang or ""
                self.sums[key] = self.sums.get(key, np.zeros(vectors.shape[1])) + vectors[row].astype(np.float64)
                self.counts[key] = self.counts.get(key, 0) + 1

    def status(self, centering: Centering, min_docs: int, threshold: float, indexed: dict[str, int] | None = None
               ) -> dict[str, Any]:
        """`drift`, per language: documents since calibration and how far its mean would move; and whether (and
        why) recalibration is advised. (Not `languages`: /models/active shows it beside the means' languages.)
        `indexed` (documents per declared language in the index): a language with `min_docs` of them and no mean
        asks for one, however its documents came in (ones applied while the means were being calibrated, after
        the sample was drawn, are in the index but were never counted here)."""
        with self._lock:
            sums, counts = dict(self.sums), dict(self.counts)
        reasons: list[str] = []
        languages: dict[str, Any] = {}
        without_mean = {lang: n for lang, n in (indexed or {}).items() if lang not in centering.means}
        for lang, added in sorted(counts.items()):
            if lang in centering.means:
                frozen, before = centering.means[lang].astype(np.float64), centering.counts[lang]
                moved = (frozen * before + sums[lang]) / (before + added)
                shift = float(np.linalg.norm(moved - frozen)) / max(float(np.linalg.norm(frozen)), 1e-12)
                languages[lang] = {"since_calibration": added, "shift": round(shift, 4)}
                if shift > threshold:
                    reasons.append(f"{lang} mean moved {shift:.3f} (> {threshold:g})")
            else:
                languages[lang or "unknown"] = {"since_calibration": added, "has_mean": False}
                if lang:
                    without_mean[lang] = max(without_mean.get(lang, 0), added)
        reasons += [f"{lang} has {n} documents and no mean"
                    for lang, n in sorted(without_mean.items()) if n >= min_docs]
        return {"drift": languages, "recalibrate": bool(reasons), "reasons": reasons}


def describe(centering: Centering | None, settings: Settings) -> dict[str, Any]:
    """What /healthz and /models/active say about the serving pair's centring."""
    if not settings.centering:
        return {"enabled": False}
    if centering is None:
        return {"enabled": True, "state": "uncalibrated",
                "detail": "serving raw vectors until the means are calibrated: once a language has "
                          f"{settings.centering_min_docs} documents, a recalibration job is queued"}
    return {"enabled": True, "state": "calibrated", "id": centering.id, "languages": centering.languages,
            "calibrated_at": centering.calibrated_at, "corpus_size": centering.corpus_size,
            "corpus_fingerprint": centering.corpus_fingerprint}


def means_for_build(reader: Corpus, encoder: Encoder, settings: Settings) -> Centering | None:
    """The means an index of this version is built with: the version's frozen ones, else a first calibration
    on the corpus (kept only if no other replica wrote one first), else None (too few documents, or off)."""
    if not settings.centering:
        return None
    folder = centering_folder(settings, encoder.version)
    existing = Centering.load(folder)
    if existing is not None:
        return existing
    fresh = inherited_means(reader, encoder, settings) or calibrate_corpus(reader, encoder, settings)
    return None if fresh is None else save_first(fresh, folder)


def inherited_means(reader: Corpus, encoder: Encoder, settings: Settings) -> Centering | None:
    """An adapter version's first means (models/adapters): its parent's, with the mean of each language it trained
    an adapter for computed again from that language's documents as the adapter encodes them. Calibrating afresh
    would move every other language's vectors with a new sample; these keep them where the parent put them. None
    for any other version, or when the parent has no means."""
    lineage = adapter_lineage(encoder.folder)
    if lineage is None:
        return None
    parent_version, trained = lineage
    parent = load_centering(settings, parent_version)
    if parent is None:
        return None
    sample, _ = sample_corpus(reader, settings.centering_sample_per_lang, encoder.detector, only=trained)
    langs: list[str | None] = [lang for _, lang, _ in sample]
    raw = (encoder.encode([text for *_, text in sample], "passage", langs) if sample
           else np.zeros((0, encoder.dim), dtype=np.float32))
    return derived_means(parent, encoder.version, set(trained), raw, langs, settings)


def derived_means(parent: Centering, version: str, changed: set[str], raw: np.ndarray,
                  langs: Sequence[str | None], settings: Settings) -> Centering:
    """The parent's means with each changed language's computed again from `raw` (its documents' new vectors; it
    gets none with fewer than `centering_min_docs`); fallback and query mean kept, so no other language moves."""
    means = {lang: mean for lang, mean in parent.means.items() if lang not in changed}
    counts = {lang: count for lang, count in parent.counts.items() if lang not in changed}
    per_lang: dict[str, list[int]] = {}
    for row, lang in enumerate(langs):
        if lang is not None and len(per_lang.setdefault(lang, [])) < settings.centering_sample_per_lang:
            per_lang[lang].append(row)
    rows = [row for found in per_lang.values() for row in found]
    fresh = language_means(raw[rows], [langs[row] or "" for row in rows], settings.centering_min_docs)
    means.update(fresh)
    counts.update({lang: len(per_lang[lang]) for lang in fresh})
    return replace(parent, model_version=version, means=means, counts=counts, calibrated_at=time.time())

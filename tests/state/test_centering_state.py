"""Centring policy pieces: the drift figure, the first-writer-wins means file, language detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xling.models.centering import Centering
from xling.models.language import LanguageDetector
from xling.state.centering import DriftTracker, save_first, uncalibrated_status


def means(version: str, en: list[float]) -> Centering:
    mean = np.asarray(en, dtype=np.float32)
    return Centering(version, {"en": mean}, {"en": 4}, mean, mean, "sha256:x", min_count=2)


def test_drift_is_how_far_the_mean_would_move_and_advises_past_the_threshold() -> None:
    centering = means("v", [1.0, 0.0])
    tracker = DriftTracker()
    tracker.add(np.asarray([[1.0, 0.0]], dtype=np.float32), ["en"])  # same as the mean: no shift
    status = tracker.status(centering, min_docs=3, threshold=0.05)
    assert status["drift"]["en"] == {"since_calibration": 1, "shift": 0.0} and not status["recalibrate"]
    tracker.add(np.asarray([[0.0, 1.0]], dtype=np.float32), ["en"])
    # (4 * (1, 0) + (1, 0) + (0, 1)) / 6 = (5/6, 1/6): |(−1/6, 1/6)| / 1 = 0.2357
    status = tracker.status(centering, min_docs=3, threshold=0.05)
    assert status["drift"]["en"]["shift"] == pytest.approx(2**0.5 / 6, abs=1e-4)
    assert status["recalibrate"] and "en mean moved" in status["reasons"][0]
    quiet = tracker.status(centering, min_docs=3, threshold=0.5)
    assert not quiet["recalibrate"]
    tracker.add(np.zeros((3, 2), dtype=np.float32), ["de", "de", "de"])  # a language without a mean
    status = tracker.status(centering, min_docs=3, threshold=0.5)
    assert status["drift"]["de"] == {"since_calibration": 3, "has_mean": False}
    assert status["reasons"] == ["de has 3 documents and no mean"]


def test_a_language_in_the_index_without_a_mean_asks_for_one_though_none_of_its_documents_was_tracked() -> None:
    """Documents applied while the means were calibrated (after the sample was drawn) are in the index, never in the
    drift: the index's own counts still ask for the missing mean."""
    centering, tracker = means("v", [1.0, 0.0]), DriftTracker()
    status = tracker.status(centering, min_docs=3, threshold=0.05, indexed={"en": 4, "de": 3, "fr": 2})
    assert status["recalibrate"] and status["reasons"] == ["de has 3 documents and no mean"]
    assert not tracker.status(centering, min_docs=3, threshold=0.05, indexed={"en": 9, "fr": 2})["recalibrate"]
    tracker.add(np.zeros((2, 2), dtype=np.float32), ["fr", "fr"])  # counted once, whichever figure is larger
    status = tracker.status(centering, min_docs=3, threshold=0.05, indexed={"en": 4, "fr": 3})
    assert status["reasons"] == ["fr has 3 documents and no mean"]


def test_an_uncalibrated_index_calibrates_once_a_language_has_enough_documents() -> None:
    assert not uncalibrated_status({"en": 4, "de": 2}, 6, min_docs=5)["recalibrate"]
    assert uncalibrated_status({"en": 5}, 5, min_docs=5)["reasons"] == ["en has 5 documents"]
    assert uncalibrated_status({}, 5, min_docs=5)["reasons"] == ["5 documents without a language"]


def test_the_first_means_written_win(tmp_path: Path) -> None:
    first, second = means("v", [1.0, 0.0]), means("v", [0.0, 1.0])
    assert save_first(first, tmp_path).id == first.id
    assert save_first(second, tmp_path).id == first.id  # a replica that calibrated later serves the first means
    loaded = Centering.load(tmp_path)
    assert loaded is not None and loaded.id == first.id
    assert [p.name for p in tmp_path.iterdir()] == ["centering.json"]  # no temporary file left behind


def test_language_detection_among_a_set() -> None:
    detector = LanguageDetector()
    assert detector.detect("Wie heißt die Hauptstadt von Frankreich?") == "de"
    assert detector.detect("Wie heißt die Hauptstadt von Frankreich?", among={"en", "nl"}) in {"en", "nl"}
    assert detector.detect("   ") is None and detector.detect("hello", among={"xx"}) is None

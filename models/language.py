"""Which language a text is in, offline: py3langid's naive Bayes model (140 languages, ISO 639-1 codes mostly),
optionally extended with languages learnt from a user's own sentences.

Used where a text's language is needed and nobody said it: to centre a query on its language's mean, to route a
text to its language's adapter, and for a document indexed without `lang`. Detection can be limited to the
languages that matter (those with a mean or an adapter): a short query told apart from 10 candidates is right more
often than from 140 (bench/RESULTS.md).

A learnt language (`LanguageProfile`) is one more column of the same naive Bayes model: the log-probabilities of
py3langid's own byte n-gram features, counted over the language's sentences. It competes with the built-in
languages on the model's own terms, so a rare language the model never saw can still be told apart from English.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

# Add-alpha smoothing of a learnt column. Small: a few hundred sentences hit a few thousand of py3langid's 100k
# features, and add-one would give every unseen feature more mass than the seen ones together.
PROFILE_SMOOTHING = 0.01
PROFILE_FILE = "language_profile.npz"


def _base_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)


@dataclass(frozen=True)
class LanguageProfile:
    """How often each of py3langid's features occurs in a language's sentences (sparse)."""

    features: int  # the size of the feature set the counts index (a different py3langid model cannot use them)
    index: np.ndarray  # int64 feature ids
    counts: np.ndarray  # float64, same length

    @classmethod
    def learn(cls, sentences: Iterable[str]) -> LanguageProfile:
        identifier = _base_identifier()
        rowbase = [row << 8 for row in identifier.tk_row]
        totals: dict[int, float] = {}
        from py3langid.langid import visit_counts

        for sentence in sentences:
            # The identifier's own text normalisation (NFC, UTF-8, all-caps lowered), as it scores.
            encoded = identifier._encode(sentence)
            for feature, count in visit_counts(identifier.tk_nextmove, rowbase, identifier.tk_output, encoded).items():
                totals[feature] = totals.get(feature, 0.0) + count
        index = np.fromiter(totals.keys(), dtype=np.int64, count=len(totals))
        counts = np.fromiter(totals.values(), dtype=np.float64, count=len(totals))
        return cls(int(identifier.nb_ptc.shape[0]), index, counts)

    def column(self) -> np.ndarray:
        """log P(feature | language), smoothed, as a column of the model's table."""
        column = np.full(self.features, PROFILE_SMOOTHING)
        column[self.index] += self.counts
        logs: np.ndarray = np.log(column / column.sum())
        return logs

    def save(self, folder: Path) -> None:
        np.savez(folder / PROFILE_FILE, features=np.array([self.features]), index=self.index, counts=self.counts)

    @classmethod
    def load(cls, folder: Path) -> LanguageProfile | None:
        path = folder / PROFILE_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return cls(int(data["features"][0]), data["index"], data["counts"])


class LanguageDetector:
    """Thread-safe: `rank` does not mutate the model, unlike py3langid's `set_languages`.

    `profiles`: learnt languages (code -> profile) added to the built-in ones; a code the model knows already
    keeps its built-in column, and a profile counted on another feature set is refused.
    """

    _lock = threading.Lock()

    def __init__(self, profiles: Mapping[str, LanguageProfile] | None = None) -> None:
        self.profiles = dict(profiles or {})

    @cached_property
    def _identifier(self) -> Any:
        with self._lock:
            base = _base_identifier()
            new = {lang: p for lang, p in sorted(self.profiles.items()) if lang not in base.nb_classes}
            if not new:
                return base
            for lang, profile in new.items():
                if profile.features != base.nb_ptc.shape[0]:
                    raise ValueError(f"the language profile of {lang!r} counts {profile.features} features; this "
                                     f"py3langid model has {base.nb_ptc.shape[0]}: learn it again")
            from py3langid.langid import LanguageIdentifier

            columns = np.stack([p.column() for p in new.values()], axis=1).astype(base.nb_ptc.dtype)
            return LanguageIdentifier(
                np.hstack([base.nb_ptc, columns]),
                np.concatenate([base.nb_pc, np.full(len(new), base.nb_pc.mean(), dtype=base.nb_pc.dtype)]),
                list(base.nb_classes) + list(new),
                base.tk_nextmove,
                base.tk_output,
                norm_probs=False,
                tk_row=base.tk_row,
            )

    @property
    def languages(self) -> list[str]:
        return list(self._identifier.labels)

    def ranked(self, text: str) -> list[str]:
        """Every language, likeliest first ([] when the text has nothing to go by)."""
        if not text.strip():
            return []
        return [str(lang) for lang, _ in self._identifier.rank(text)]

    def detect(self, text: str, among: Collection[str] | None = None) -> str | None:
        """The likeliest language of `text`, or of those in `among`; None when `among` names none it knows
        or the text has nothing to go by."""
        if not text.strip():
            return None
        for lang, _ in self._identifier.rank(text):
            if among is None or lang in among:
                return str(lang)
        return None


DETECTOR = LanguageDetector()  # the built-in languages only; one per process (the model takes ~1 s to load)

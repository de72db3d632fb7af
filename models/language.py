"""Which language a text is in, offline: py3langid's naive Bayes model (97 languages, ISO 639-1 codes).

Used where a text's language is needed and nobody said it: to centre a query on its language's mean, and a
document indexed without `lang`. Detection can be limited to the languages that matter (those with a mean):
a short query told apart from 10 candidates is right more often than from 97 (bench/RESULTS.md).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from functools import cached_property
from typing import Any


class LanguageDetector:
    """Thread-safe: `rank` does not mutate the model, unlike py3langid's `set_languages`."""

    _lock = threading.Lock()

    @cached_property
    def _identifier(self) -> Any:
        with self._lock:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)

    @property
    def languages(self) -> list[str]:
        return list(self._identifier.labels)

    def detect(self, text: str, among: Collection[str] | None = None) -> str | None:
        """The likeliest language of `text`, or of those in `among`; None when `among` names none it knows
        or the text has nothing to go by."""
        if not text.strip():
            return None
        for lang, _ in self._identifier.rank(text):
            if among is None or lang in among:
                return str(lang)
        return None

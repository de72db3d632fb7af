"""Text analysis for the lexical index: ICU word segmentation, case folding, a stemmer where one exists.

ICU's word break rules (UAX #29 plus dictionaries) segment every script, including Thai, Lao, Khmer and CJK
text written without spaces, with the same rules whatever the language; only stemming depends on it. Documents
and queries go through the same function, so whatever a language's analyser does to one it does to the other.
"""

from __future__ import annotations

import unicodedata
from functools import cache

import tantivy
from icu4py.breakers import WordBreaker

# Languages with a Snowball stemmer in tantivy, by ISO 639-1 code. Any other language is segmented and folded
# only: a wrong stemmer does more harm than none.
STEMMERS: dict[str, str] = {
    "ar": "arabic", "da": "danish", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "fi": "finnish", "fr": "french", "hu": "hungarian", "it": "italian", "nl": "dutch", "no": "norwegian",
    "nb": "norwegian", "pt": "portuguese", "ro": "romanian", "ru": "russian", "sv": "swedish", "ta": "tamil",
    "tr": "turkish",
}


def fold(token: str) -> str:
    """Compatibility forms unified (full-width letters, ligatures), then full Unicode case folding."""
    return unicodedata.normalize("NFKC", token).casefold()


def words(text: str) -> list[str]:
    """The text's words, numbers and ideographic runs, folded; the segments between them (spaces, punctuation:
    no letter or digit in them) dropped."""
    # The root locale: ICU's word rules and dictionaries pick the script's segmentation by themselves.
    return [fold(segment) for segment in WordBreaker(text, "und") if any(ch.isalnum() for ch in segment)]


def base_language(lang: str | None) -> str | None:
    """'pt-BR' -> 'pt', 'zh-Hans' -> 'zh'."""
    return lang.split("-")[0].lower() if lang else None


@cache
def _stemmer(name: str) -> tantivy.TextAnalyzer:
    return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.whitespace()).filter(tantivy.Filter.stemmer(name)).build()


def has_stemmer(lang: str | None) -> bool:
    return base_language(lang) in STEMMERS


def terms(text: str, lang: str | None) -> list[str]:
    """What the lexical index stores and looks up for `text` in a language's partition: its words, stemmed
    with the language's stemmer when it has one."""
    return stem(words(text), lang)


def stem(found: list[str], lang: str | None) -> list[str]:
    """Words (from `words`) as a language's partition stores them: stemmed where the language has a stemmer."""
    name = STEMMERS.get(base_language(lang) or "")
    if name is None or not found:
        return found
    # Stemmed one word at a time: a word never holds whitespace (ICU split there), so the count is kept.
    return _stemmer(name).analyze(" ".join(found))

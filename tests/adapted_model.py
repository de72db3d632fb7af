"""A tiny real model and a version of it with one trained language adapter, for the adapter tests (models, api).

The adapter's language is made up: English words with their letters rotated (rot13) and a suffix, so it shares no
n-gram statistics with English (its own words for the tokenizer and the detector alike).
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_model import build_tiny_model, random_sentences
from xling.models.adapters.config import AdapterConfig
from xling.models.adapters.training import train_adapters
from xling.models.data.bitext import BitextPair
from xling.models.resolve import ModelSource

_SHIFT = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")
RARE = "xqz"
STEPS = 120


def invented(sentence: str) -> str:
    return " ".join(word.translate(_SHIFT) + "uq" for word in sentence.split())


ENGLISH = random_sentences("en", 80, seed=3)
INVENTED = [invented(s) for s in ENGLISH]


def build_base(folder: Path) -> ModelSource:
    build_tiny_model(folder, extra_texts=INVENTED, seed=1)
    return ModelSource(folder, folder.name, "folder", str(folder))


def build_adapted(base: ModelSource, out: Path) -> Path:
    """`base` plus an adapter for RARE trained on INVENTED -> ENGLISH, written as the version folder `out`."""
    pairs = [BitextPair(f"train.{RARE}-en", RARE, "en", INVENTED, ENGLISH)]
    config = AdapterConfig(rank=8, lora_alpha=16, learning_rate=1e-2, batch_size=16, max_steps=STEPS, eval_steps=20,
                           early_stopping_patience=None, val_fraction=0.25, max_seconds=None, max_length=32)
    trained = train_adapters(base, pairs, [RARE], out, config, version=out.name, device="cpu")
    assert trained is not None and trained[0].steps == STEPS
    return out

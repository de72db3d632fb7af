"""A tiny random BERT and a WordPiece tokenizer trained on a small multilingual text, saved in
sentence-transformers layout. Built fresh by the tests: no hub, no downloaded weights."""

from __future__ import annotations

import random
from pathlib import Path

# A few sentences per language; the tokenizer learns its vocabulary from these.
CORPUS = {
    "en": [
        "the cat sleeps on the warm windowsill",
        "stock markets fell sharply on monday",
        "the river floods the old town every spring",
        "a new library opened near the central station",
        "scientists discovered water on a distant planet",
        "the football team won the final match",
    ],
    "de": [
        "die katze schläft auf der warmen fensterbank",
        "die aktienmärkte fielen am montag stark",
        "der fluss überflutet jeden frühling die altstadt",
        "eine neue bibliothek öffnete nahe dem hauptbahnhof",
        "wissenschaftler entdeckten wasser auf einem fernen planeten",
        "die fußballmannschaft gewann das endspiel",
    ],
    "fr": [
        "le chat dort sur le rebord chaud de la fenêtre",
        "les marchés boursiers ont fortement chuté lundi",
        "la rivière inonde la vieille ville chaque printemps",
        "une nouvelle bibliothèque a ouvert près de la gare centrale",
        "des scientifiques ont découvert de l'eau sur une planète lointaine",
        "l'équipe de football a gagné la finale",
    ],
    "es": [
        "el gato duerme en el alféizar cálido",
        "los mercados bursátiles cayeron con fuerza el lunes",
        "el río inunda el casco antiguo cada primavera",
        "una nueva biblioteca abrió cerca de la estación central",
        "los científicos descubrieron agua en un planeta lejano",
        "el equipo de fútbol ganó la final",
    ],
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def words(lang: str) -> list[str]:
    return sorted({word for sentence in CORPUS[lang] for word in sentence.split()})


def random_sentences(lang: str, count: int, seed: int, length: int = 8) -> list[str]:
    """Distinct random sentences over the language's words (so tokens are known to the tokenizer)."""
    rng = random.Random(seed)
    vocabulary = words(lang)
    seen: set[str] = set()
    while len(seen) < count:
        seen.add(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(3, length))))
    return sorted(seen)


def build_tiny_model(
    folder: Path,
    *,
    pooling: str = "mean",
    hidden: int = 32,
    layers: int = 2,
    max_seq_length: int = 64,
    seed: int = 0,
    extra_texts: list[str] | None = None,
) -> Path:
    """Write a sentence-transformers folder (safetensors weights) and return its path."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    texts = [sentence for sentences in CORPUS.values() for sentence in sentences] + (extra_texts or [])
    # The vocabulary is written out, not trained: the WordPiece trainer breaks ties differently in every process,
    # so a trained tiny model differed from run to run (and so did what tests built on it could learn). Every
    # word of the texts is a token, and every character alone and as a continuation, so any other word splits.
    found = sorted({word for text in texts
                    for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({char for word in found for char in word})
    tokens = dict.fromkeys([*SPECIAL_TOKENS, *chars, *(f"##{char}" for char in chars), *found])
    tokenizer = Tokenizer(tok_models.WordPiece({token: n for n, token in enumerate(tokens)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_seq_length,
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    raw = folder.parent / f".{folder.name}-hf"
    BertModel(config).save_pretrained(raw)
    hf_tokenizer.save_pretrained(raw)
    transformer = st_models.Transformer(str(raw), max_seq_length=max_seq_length)
    modules = [transformer, st_models.Pooling(hidden, pooling), st_models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder

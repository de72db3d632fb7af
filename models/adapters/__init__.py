"""Per-language LoRA adapters: a rare language tuned without moving any other language's vectors.

An adapter is trained to map a language's sentences onto the frozen base's embeddings of their translations
(`training.py`); a model version carries its adapters in `adapters/<lang>/` and lists them in its manifest
(`bundle.py`); the encoder runs text in an adapted language through its adapter and everything else through the
untouched base weights (`xling.models.encoder`).
"""

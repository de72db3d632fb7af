"""A model version's adapters on disk: `adapters/<lang>/` (peft layout) beside the base weights, listed in the
manifest's `adapters` field (versions.py writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xling.models.manifest import read_manifest

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTERS_DIR = "adapters"


def adapter_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Language -> manifest record of each adapter a version carries ({} for a version without)."""
    manifest = read_manifest(folder)
    return dict(manifest.adapters) if manifest is not None else {}


def adapter_lineage(folder: Path) -> tuple[str, frozenset[str]] | None:
    """(parent version, languages trained) of a version that only trained adapters on its parent's shared weights
    (a finetune job with `adapters`): every other language is encoded exactly as the parent encodes it. None for
    any other version."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.training.get("kind") != "adapters" or not manifest.parent_version:
        return None
    return manifest.parent_version, frozenset(manifest.training.get("languages", []))


def adapter_folder(folder: Path, lang: str) -> Path:
    return folder / ADAPTERS_DIR / lang


def attach_adapters(model: torch.nn.Module, folder: Path, langs: list[str]) -> PeftModel:
    """`model` (the base transformer) with every listed language's adapter loaded, each under its language's name;
    which one runs is chosen per forward (the encoder does)."""
    from peft import PeftModel  # only versions with adapters pay for importing peft

    if not langs:
        raise ValueError("attach_adapters needs at least one language")
    for lang in langs:
        if not (adapter_folder(folder, lang) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} lists an adapter for {lang!r} but {adapter_folder(folder, lang)} "
                                    "holds none")
    first, *rest = langs
    peft_model = PeftModel.from_pretrained(model, str(adapter_folder(folder, first)), adapter_name=first)
    for lang in rest:
        peft_model.load_adapter(str(adapter_folder(folder, lang)), adapter_name=lang)
    peft_model.eval()
    return peft_model

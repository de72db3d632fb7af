"""Writing a version with adapters: its parent's files (the weights hard-linked, not rewritten) plus the new
adapters, and a manifest that lists them all. A parent without a manifest (a plain sentence-transformers folder)
gets one from what its folder says, so the child serves with the same pooling and prefixes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from xling.models.adapters.bundle import adapter_folder
from xling.models.centering import CENTERING_FILE
from xling.models.encoder import read_layout
from xling.models.files import utc_now_iso
from xling.models.manifest import Manifest, read_manifest, write_manifest


def _link_or_copy(src: str, dst: str) -> None:
    """The same bytes under a new name: a hard link where the filesystem allows (no disk for unchanged weights)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_version_with_adapters(
    parent: Path, out: Path, adapters: dict[str, tuple[Path, dict[str, Any]]], *, version: str, parent_version: str,
    training: dict[str, Any] | None = None, name_hint: str = "",
) -> Manifest:
    """A new version folder at `out`: `parent`'s files (its weights linked, not rewritten, and its adapters), plus
    `adapters` (language -> (trained folder, manifest record)); a language the parent had is replaced."""
    if out.exists():
        raise FileExistsError(f"{out} exists")
    parent_manifest = read_manifest(parent) or _manifest_from_layout(parent, parent_version, name_hint)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    # Not the parent's means: they describe the parent's vectors (the deploy derives this version's).
    shutil.copytree(parent, staging, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(".*", "checkpoints", CENTERING_FILE))
    records = dict(parent_manifest.adapters)
    for lang, (trained, record) in adapters.items():
        target = adapter_folder(staging, lang)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(trained, target)
        records[lang] = record
    manifest = Manifest.from_dict({
        **parent_manifest.to_dict(),
        "version": version,
        "parent_version": parent_version,
        "adapters": dict(sorted(records.items())),
        "training": training or {},
        "metrics": {},  # the parent's metrics describe the parent; this version's come from its own evaluation
        "created_at": utc_now_iso(),
    })
    write_manifest(staging, manifest)
    staging.rename(out)
    return manifest


def _manifest_from_layout(folder: Path, version: str, name_hint: str) -> Manifest:
    layout = read_layout(folder, name_hint)
    return Manifest(
        version=version, base_model=name_hint or version, pooling=layout.pooling, query_prefix=layout.query_prefix,
        passage_prefix=layout.passage_prefix, max_length=layout.max_length or 512,
    )

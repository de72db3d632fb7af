"""Uploaded datasets under DATA_DIR/datasets/<name>/: validated with their loader on arrival.

Two kinds: parallel QA (a LAReQA folder in a zip, or JSONL groups) for training and LAReQA evaluation,
and bitext (a Tatoeba folder in a zip, or JSONL `{"src", "tgt", "src_lang", "tgt_lang"}` rows) for
accuracy@1 evaluation and cross-lingual training pairs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from xling.models.data.bitext import is_bitext, load_bitext
from xling.models.data.parallel import TrainingShape, load_parallel
from xling.models.data.text import DataError
from xling.models.files import remove_dir, utc_now_iso, write_json_atomic

INFO_FILE = "dataset.json"
_CHUNK = 1024 * 1024


class DatasetExists(Exception):
    pass


@dataclass(frozen=True)
class UnpackLimits:
    """Bounds on what a zip may expand to: checked while streaming, so a bomb never fills memory or disk."""

    max_bytes: int
    max_ratio: float
    # Tiny members compress badly or absurdly well; the ratio applies past this many bytes.
    ratio_floor_bytes: int = 1024 * 1024


class UnpackTooLarge(DataError):
    """A zip that unpacks past the limits (HTTP 413)."""


def _copy_member(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path, budget: int, limits: UnpackLimits
) -> int:
    """Stream one member to disk; returns the bytes written. Counts real bytes: headers can lie."""
    member_cap = max(limits.ratio_floor_bytes, int(member.compress_size * limits.max_ratio))
    written = 0
    with archive.open(member) as source, destination.open("wb") as target:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise UnpackTooLarge(f"the archive unpacks to more than {limits.max_bytes} bytes (the limit)")
            if written > member_cap:
                raise UnpackTooLarge(
                    f"{member.filename!r} unpacks to more than {limits.max_ratio:g} times its compressed size "
                    f"({member.compress_size} bytes); a zip bomb is refused"
                )
            target.write(chunk)
    return written


def _extract_zip(upload: BinaryIO, target: Path, limits: UnpackLimits) -> None:
    try:
        archive = zipfile.ZipFile(upload)
    except zipfile.BadZipFile:
        raise DataError("the upload is not a zip archive") from None
    # Refuse on the declared sizes first (cheap), then count while streaming (declared sizes can lie).
    declared = sum(m.file_size for m in archive.infolist())
    if declared > limits.max_bytes:
        raise UnpackTooLarge(f"the archive declares {declared} unpacked bytes; the limit is {limits.max_bytes}")
    unpacked = 0
    for member in archive.infolist():
        parts = PurePosixPath(member.filename).parts
        if member.filename.startswith("/") or ".." in parts:
            raise DataError(f"unsafe path in the archive: {member.filename!r}")
        if member.is_dir() or parts[-1].startswith(".") or "__MACOSX" in parts:
            continue
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            unpacked += _copy_member(archive, member, destination, limits.max_bytes - unpacked, limits)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise DataError(f"{member.filename!r} cannot be unpacked ({exc})") from None


def data_root(folder: Path) -> Path:
    """The folder (or file) a loader should read: skips one wrapping folder, as zips often have."""
    entries = [p for p in folder.iterdir() if p.name != INFO_FILE]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    jsonl = [p for p in entries if p.suffix == ".jsonl"]
    return jsonl[0] if len(jsonl) == 1 and len(entries) == 1 else folder


def _bitext_summary(path: Path) -> dict[str, Any]:
    pairs = load_bitext(path)
    return {
        "pairs": [{"name": p.name, "src": p.src, "tgt": p.tgt, "lines": len(p.src_lines)} for p in pairs],
        "languages": sorted({lang for p in pairs for lang in (p.src, p.tgt)}),
        "lines": sum(len(p.src_lines) for p in pairs),
    }


def save_dataset(
    datasets_dir: Path, name: str, filename: str, upload: BinaryIO, limits: UnpackLimits, replace: bool = False
) -> dict[str, Any]:
    """Store a zip or a .jsonl upload (QA or bitext); refuse it, leaving nothing behind, if it does not load.

    `upload` is read in chunks (a file object, e.g. the spooled upload), never whole into memory.
    `replace`: an existing dataset of that name is swapped for the new one once the new one loads.
    """
    final = datasets_dir / name
    if final.exists() and not replace:
        raise DatasetExists(name)
    datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".upload-{name}-", dir=datasets_dir))
    try:
        if filename.endswith(".jsonl"):
            received = staging / "upload.jsonl"
            with received.open("wb") as target:
                shutil.copyfileobj(upload, target, _CHUNK)
            bitext = is_bitext(received)
            # A bitext file is named after the dataset: its pairs are reported as "<name>.<src>-<tgt>".
            received.rename(staging / (f"{name}.jsonl" if bitext else "groups.jsonl"))
            data_format = "bitext-jsonl" if bitext else "jsonl"
        elif filename.endswith(".zip"):
            _extract_zip(upload, staging, limits)
            root = data_root(staging)
            if is_bitext(root):
                data_format = "bitext-jsonl" if list(root.glob("*.jsonl")) else "bitext-tatoeba"
            else:
                data_format = "lareqa" if list(root.glob("*.json")) else "jsonl"
        else:
            raise DataError(
                "upload a .zip (LAReQA folder of <lang>.json files, or Tatoeba bitext files) or a .jsonl file "
                "(parallel QA groups, or bitext rows with src, tgt, src_lang, tgt_lang)"
            )
        if data_format.startswith("bitext"):
            kind, summary = "bitext", _bitext_summary(data_root(staging))
        else:
            kind, summary = "qa", load_parallel(data_root(staging))[1].to_dict()
        info = {"name": name, "kind": kind, "format": data_format, "summary": summary, "created_at": utc_now_iso()}
        write_json_atomic(staging / INFO_FILE, info)
        replaced = staging.with_name(staging.name + "-replaced")
        if final.exists():
            final.rename(replaced)  # two renames: the name is without a dataset only between them
        staging.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
        return info
    except DataError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # Name files as the uploader knows them, not by the server's staging path.
        message = str(exc).replace(f"{staging}/", "").replace(str(staging), "upload")
        if filename.endswith(".jsonl"):  # stored under another name; say the one the uploader sent
            for stored in ("upload.jsonl", "groups.jsonl", f"{name}.jsonl"):
                message = message.replace(stored, PurePosixPath(filename).name)
        raise type(exc)(message) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def list_datasets(datasets_dir: Path) -> list[dict[str, Any]]:
    found = []
    if datasets_dir.is_dir():
        for folder in sorted(datasets_dir.iterdir()):
            info = folder / INFO_FILE
            if folder.is_dir() and not folder.name.startswith(".") and info.is_file():
                found.append(json.loads(info.read_text()))
    return sorted(found, key=lambda d: d["created_at"], reverse=True)


def delete_dataset(datasets_dir: Path, name: str) -> bool:
    """Remove a dataset; False if there was none."""
    folder = datasets_dir / name
    return (folder / INFO_FILE).is_file() and remove_dir(folder)


def dataset_info(datasets_dir: Path, name: str) -> dict[str, Any] | None:
    """What the upload stored of a dataset: name, kind (qa | bitext), format, summary; None if there is none."""
    info = datasets_dir / name / INFO_FILE
    if not info.is_file():
        return None
    loaded: dict[str, Any] = json.loads(info.read_text(encoding="utf-8"))
    return loaded


def training_shape(infos: list[dict[str, Any]]) -> TrainingShape:
    """The shape of several datasets trained on together, from their upload summaries (no data is read)."""
    groups = bitext = 0
    has_mono = has_cross = False
    languages: set[str] = set()
    for info in infos:
        summary = info["summary"]
        languages.update(summary["languages"])
        if info["kind"] == "bitext":  # each line pair is one cross-lingual-only group
            groups += summary["lines"]
            bitext += summary["lines"]
            has_cross = has_cross or summary["lines"] > 0
        else:
            groups += summary["groups"]
            has_mono = has_mono or any(summary["groups_per_language"].values())
            has_cross = has_cross or bool(summary["cross_pairs"])
    return TrainingShape(groups, bitext, has_mono, has_cross, sorted(languages))


def dataset_path(datasets_dir: Path, name: str) -> Path | None:
    folder = datasets_dir / name
    return data_root(folder) if (folder / INFO_FILE).is_file() else None

"""Deploying a version that only adds (or replaces) language adapters: its index is its parent's, with just the
documents of those languages encoded again.

An adapter version's shared weights are its parent's (hard-linked, models/adapters/versions.py), and the encoder
sends every text outside an adapter's language through them, so every other document's vector is the parent's.
The build therefore:
1. loads the parent's snapshot and replays the log into it with the parent's encoder (its index as of now);
2. finds the documents the new version encodes differently: those whose language (given, else detected by each
   version's detector) has a new or changed adapter, or is detected differently now that the detector knows more;
3. checks the claim on a sample of the other documents: encoded again with the new version, each must come out as
   the parent stored it (else the whole corpus is encoded, as for any version);
4. derives the new means: the parent's, with each changed language's mean computed again from its documents'
   new vectors (fallback and query mean kept, so no other vector moves); and re-encodes the moved documents.
Local tiers only (flat, hnsw): a Qdrant deployment encodes every document into a new collection, with the same
derived means (state/centering.py `inherited_means`), so there too no other language's vectors move.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xling.models.adapters.bundle import adapter_lineage, adapter_records
from xling.models.encoder import Encoder
from xling.models.index.vector_index import IndexMismatchError, SnapshotError, VectorIndex
from xling.models.resolve import ModelSource
from xling.state.centering import centering_folder, derived_means, load_centering, save_first, snapshot_folder
from xling.state.docstore import DocReader, StoredDoc
from xling.state.indexing import ServingPair, catch_up, index_spec, load_encoder
from xling.state.retention import LogTrimmed
from xling.state.settings import Settings

log = logging.getLogger(__name__)
CHECK_SAMPLE = 64  # reused documents encoded again to prove their vectors unchanged
CHECK_TOLERANCE = 1e-5  # float noise of a different batch composition; a changed encoder moves vectors by far more


@dataclass(frozen=True)
class AdapterBuild:
    pair: ServingPair
    outcome: dict[str, Any]


def adapter_parent(source: ModelSource) -> str | None:
    """The version whose index an adapter version can start from: its parent, when it only added adapters."""
    lineage = adapter_lineage(source.path)
    return lineage[0] if lineage is not None else None


def changed_languages(parent: Encoder, child: Encoder) -> set[str]:
    """Languages whose adapter the child added, replaced or dropped."""
    old, new = adapter_records(parent.folder), adapter_records(child.folder)
    return {lang for lang in old.keys() | new.keys() if old.get(lang) != new.get(lang)}


def build_from_parent(
    reader: DocReader, settings: Settings, source: ModelSource, encoder: Encoder, parent: ModelSource,
    progress: Callable[[int, int], None], check_log: Callable[[str], None],
) -> AdapterBuild | None:
    """The new version's index from the parent's (module docstring); None when that cannot be done safely (no
    snapshot, means of its own already, a check that failed), and the caller encodes everything."""
    started = time.monotonic()
    if load_centering(settings, source.version) is not None:
        log.info("adapter deploy: %s has means of its own already; encoding everything", source.version)
        return None
    parent_centering = load_centering(settings, parent.version)
    try:
        index, offset = VectorIndex.load(snapshot_folder(settings.indexes_dir, parent.version, parent_centering),
                                         parent.version, encoder.dim, index_spec(settings))
    except (SnapshotError, IndexMismatchError) as exc:
        log.info("adapter deploy: no usable snapshot of %s (%s); encoding everything", parent.version, exc)
        return None
    parent_encoder = load_encoder(parent, settings)
    previous = ServingPair(parent_encoder, index, offset, parent_centering)
    try:
        check_log(offset)
        catch_up(reader, previous, settings.applier_batch)
        check_log(offset)  # a trim during the replay may have taken entries it was about to read
    except LogTrimmed as exc:
        log.info("adapter deploy: the log no longer reaches back to %s's snapshot (%s); encoding everything",
                 parent.version, exc)
        return None
    changed = changed_languages(parent_encoder, encoder)
    moved: list[tuple[str, StoredDoc, str | None]] = []
    kept: list[tuple[str, StoredDoc]] = []
    for docs in reader.iter_all(2_048):
        for doc_id, doc in docs:
            lang = doc.lang or encoder.detector.detect(doc.text)
            before = doc.lang or parent_encoder.detector.detect(doc.text)
            if lang != before or lang in changed:
                moved.append((doc_id, doc, lang))
            elif len(kept) < CHECK_SAMPLE and doc_id in index:
                kept.append((doc_id, doc))
    drift = _reused_drift(previous, encoder, kept)
    if drift > CHECK_TOLERANCE:
        log.warning("adapter deploy: documents outside the adapters' languages moved (max %.2g); encoding "
                    "everything", drift)
        return None
    raw = encoder.encode([doc.text for _, doc, _ in moved], "passage", [lang for *_, lang in moved])
    centering = None if parent_centering is None else derived_means(
        parent_centering, source.version, changed | {lang for *_, lang in moved if lang}, raw,
        [lang for *_, lang in moved], settings)
    if centering is not None and save_first(centering, centering_folder(settings, source.version)).id != centering.id:
        log.warning("adapter deploy: another process wrote %s's means meanwhile; encoding everything", source.version)
        return None
    index.model_version = source.version
    if moved:
        langs = [lang for *_, lang in moved]
        vectors = centering.documents(raw, langs) if centering is not None else raw
        index.upsert([doc.entry(doc_id) for doc_id, doc, _ in moved], vectors)
    progress(len(index), len(index))
    pair = ServingPair(encoder, index, previous.applied_offset, centering)
    outcome = {
        "reindex": "adapters only", "reindexed": len(moved), "reused": len(index) - len(moved),
        "changed_languages": sorted(changed), "reused_check": {"documents": len(kept), "max_abs_diff": drift},
        "parent": parent.version, "delta_seconds": round(time.monotonic() - started, 2),
    }
    log.info("adapter deploy from the parent's index", extra=outcome)
    return AdapterBuild(pair, outcome)


def _reused_drift(previous: ServingPair, encoder: Encoder, kept: list[tuple[str, StoredDoc]]) -> float:
    """The largest difference between a reused document's stored vector and the new version's encoding of it
    (centred with the parent's means, as stored)."""
    if not kept:
        return 0.0
    ids = [doc_id for doc_id, _ in kept]
    child = ServingPair(encoder, previous.index, previous.applied_offset, previous.centering)
    fresh = child.document_vectors([doc for _, doc in kept])
    assert isinstance(previous.index, VectorIndex)
    stored = previous.index.vectors_of(ids)
    return float(np.abs(fresh - stored).max())

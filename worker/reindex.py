"""Re-encoding the corpus spread over every worker of the queue.

The worker running the reindex (or deploy) job reads the log offset O, lists the document ids into `ranges`
files, and queues one helper task per other live worker (`xling.reindex_range`). Every participant, the job's
own worker included, claims ranges on the `RangeBoard` (state/reindex_ranges.py) until none is left, encoding
each in chunks, a file per chunk written whole (a temporary file renamed into place). A thread keeps the range's
lease while the worker lives, however slow its chunks. The job's worker then waits for ranges leased to others,
taking over any whose lease lapses (its worker died or was stopped): the chunks already written are kept, the
rest encoded. It merges the chunks into the index it saves at O, as a single-worker build would. Each chunk file
holds its listed documents once, however many times it was encoded, so nothing is missing or doubled.

Only this module knows the chunk files' layout; Celery stays in worker/celery_app.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import redis

from xling.models.centering import Centering
from xling.models.files import write_json_atomic
from xling.models.index.vector_index import DocEntry, IndexSpec, VectorIndex
from xling.models.resolve import ModelSource, resolve_model
from xling.state.docstore import Corpus
from xling.state.indexing import ServingPair, load_encoder
from xling.state.keys import RedisKeys
from xling.state.leases import KeptLease
from xling.state.reindex_ranges import RangeBoard
from xling.state.settings import Settings
from xling.worker.build_tiers import open_corpus

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CENTERING_DIR = "centering"
ENCODE_CHUNK = 128  # documents read, encoded and written together (a chunk file): what a lost range keeps


@dataclass(frozen=True)
class RangePlan:
    job_id: str
    version: str
    source_path: str
    source_name: str
    offset: str  # the log offset the merged index has applied
    sizes: list[int]  # documents listed in each range
    centred: bool
    chunk: int = ENCODE_CHUNK  # ids per chunk file: the coordinator's, so that every participant cuts alike

    @property
    def ranges(self) -> int:
        return len(self.sizes)


def ranges_folder(settings: Settings, job_id: str) -> Path:
    return settings.indexes_dir / ".ranges" / job_id


def write_plan(
    reader: Corpus, folder: Path, job_id: str, source: ModelSource, ranges: int, centering: Centering | None,
    chunk: int = ENCODE_CHUNK,
) -> RangePlan:
    """Read O, then list every id into `ranges` near-equal files. Writes landing after O are replayed by the
    apis from O, so a document listed (or missed) meanwhile converges either way."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    offset = reader.start_offset()
    ids = list(dict.fromkeys(doc_id for chunk in reader.iter_all(5_000) for doc_id, _ in chunk))
    parts = np.array_split(np.arange(len(ids)), ranges)
    for number, rows in enumerate(parts):
        (folder / f"ids-{number}.json").write_text(json.dumps([ids[i] for i in rows]), encoding="utf-8")
    if centering is not None:
        centering.save(folder / CENTERING_DIR)
    plan = RangePlan(job_id, source.version, str(source.path), source.name, offset, [len(p) for p in parts],
                     centering is not None, chunk)
    write_json_atomic(folder / PLAN_FILE, asdict(plan))  # last: a helper that can read the plan finds the rest
    return plan


def read_plan(folder: Path) -> RangePlan | None:
    try:
        return RangePlan(**json.loads((folder / PLAN_FILE).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def plan_source(plan: RangePlan, settings: Settings) -> ModelSource:
    """The coordinator's model on this machine: the folder it read, when this machine sees the same path (a
    shared data folder), else the model found here under the name the coordinator resolved (a hub model in this
    machine's own cache, say). A different version under that name is refused: the ranges would not match."""
    folder = Path(plan.source_path)
    if folder.is_dir():
        return ModelSource(folder, plan.version, "folder", plan.source_name)
    found = resolve_model(plan.source_name, settings.models_dir)
    if found.version != plan.version:
        raise RuntimeError(
            f"reindex {plan.job_id}: {plan.source_name!r} is {found.version} on this worker, not {plan.version}"
        )
    return found


def plan_encoder(plan: RangePlan, folder: Path, settings: Settings) -> ServingPair:
    """The encoder and means every participant encodes with (the index inside is not used)."""
    encoder = load_encoder(plan_source(plan, settings), settings)
    centering = Centering.load(folder / CENTERING_DIR) if plan.centred else None
    return ServingPair(encoder, VectorIndex(encoder.dim, encoder.version), plan.offset, centering)


class LeaseLost(Exception):
    """This worker's lease on a range lapsed and another worker may have it: leave the range to it."""


def chunk_path(folder: Path, number: int, chunk: int) -> Path:
    return folder / f"range-{number}" / f"chunk-{chunk}.npz"


def chunks_in(plan: RangePlan, number: int) -> int:
    return -(-plan.sizes[number] // plan.chunk)


def encoded_documents(folder: Path, plan: RangePlan) -> int:
    """Documents listed in chunks written so far (a listing, no file read): the progress of the whole reindex."""
    return sum(min(plan.sizes[n], plan.chunk * len(list((folder / f"range-{n}").glob("chunk-*.npz"))))
               for n in range(plan.ranges))


def encode_range(
    reader: Corpus, folder: Path, plan: RangePlan, number: int, pair: ServingPair, lease: KeptLease,
    after_chunk: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """Encode one range, a chunk file (written whole) per `plan.chunk` listed ids; chunks already on disk (a
    holder before this one wrote them) are kept. Returns (documents encoded now, chunks kept). Ids deleted since
    the plan are skipped (the apis' replay removes them anyway). Raises LeaseLost at the first commit point
    where the lease is no longer held."""
    ids = json.loads((folder / f"ids-{number}.json").read_text(encoding="utf-8"))
    chunk_path(folder, number, 0).parent.mkdir(exist_ok=True)
    encoded = kept = 0
    for chunk in range(chunks_in(plan, number)):
        path = chunk_path(folder, number, chunk)
        if path.exists():
            kept += 1
            continue
        found = reader.get_many(ids[chunk * plan.chunk : (chunk + 1) * plan.chunk])
        docs = list(found.values())
        vectors = pair.document_vectors(docs) if docs else np.zeros((0, pair.encoder.dim), np.float32)
        if not lease.held:
            raise LeaseLost(f"range {number}")
        temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.npz")
        np.savez(temporary, ids=np.array(list(found), dtype=str), langs=np.array([d.lang or "" for d in docs], str),
                 metadata=np.array([json.dumps(d.metadata, ensure_ascii=False) for d in docs], dtype=str),
                 vectors=vectors.astype(np.float32))
        os.replace(temporary, path)
        encoded += len(docs)
        if after_chunk is not None:
            after_chunk()
    return encoded, kept


def encode_ranges(
    reader: Corpus, board: RangeBoard, folder: Path, plan: RangePlan, pair: ServingPair, worker: str,
    after_chunk: Callable[[], None] | None = None,
) -> int:
    """Claim and encode ranges until none is free; returns how many this worker finished. Each claim's lease is
    kept by a thread while its range is encoded (KeptLease), so a slow chunk does not lose it."""
    finished = 0
    while (claim := board.claim(worker)) is not None:
        with KeptLease(partial(board.renew, claim), board.lease_ms / 1000, f"range {claim.number}") as lease:
            try:
                encoded, kept = encode_range(reader, folder, plan, claim.number, pair, lease, after_chunk)
                if not board.finish(claim):
                    raise LeaseLost(f"range {claim.number}")
            except LeaseLost:
                log.warning("reindex range lost: its lease lapsed (this worker was stopped or cut off from "
                            "Redis); whoever claims it next keeps the chunks written", extra={"range": claim.number})
                continue
        finished += 1
        log.info("reindex range encoded", extra={"range": claim.number, "documents": encoded,
                                                   "chunks_kept": kept, "worker": worker})
    return finished


def merge_ranges(folder: Path, plan: RangePlan, pair: ServingPair, spec: IndexSpec) -> ServingPair:
    """The index of every range's chunks, at the plan's offset."""
    index = VectorIndex(pair.encoder.dim, pair.encoder.version, spec)
    for number in range(plan.ranges):
        for chunk in range(chunks_in(plan, number)):
            with np.load(chunk_path(folder, number, chunk)) as part:
                entries = [
                    DocEntry(str(doc_id), str(lang) or None, json.loads(str(meta)))
                    for doc_id, lang, meta in zip(part["ids"], part["langs"], part["metadata"], strict=True)
                ]
                if entries:
                    index.upsert(entries, part["vectors"])
    return ServingPair(pair.encoder, index, plan.offset, pair.centering)


def help_reindex(job_id: str, settings: Settings, client: redis.Redis, worker: str) -> int:
    """The helper task's body: encode free ranges of a running reindex; returns how many it finished (0 when
    the reindex is over or never planned)."""
    folder = ranges_folder(settings, job_id)
    plan = read_plan(folder)
    if plan is None:
        return 0
    keys = RedisKeys(settings.key_prefix)
    board = RangeBoard(client, keys, job_id, plan.ranges, settings.reindex_lease_s)
    if len(board.done()) == plan.ranges:
        return 0
    try:
        with open_corpus(settings, client, keys) as corpus:
            return encode_ranges(corpus, board, folder, plan, plan_encoder(plan, folder, settings), worker)
    except FileNotFoundError:
        return 0  # the job finished (or was cancelled) and removed the ranges meanwhile


def wait_for_ranges(
    reader: Corpus, board: RangeBoard, folder: Path, plan: RangePlan, pair: ServingPair, worker: str,
    tick: Callable[[int], None], poll_s: float = 0.2,
) -> None:
    """The job's worker: encode ranges, then wait for those others hold, taking over any whose lease lapses.
    `tick(documents encoded)` runs after each chunk and while waiting (progress, cancellation, fencing)."""

    def report() -> None:
        tick(encoded_documents(folder, plan))

    while len(board.done()) < plan.ranges:
        encode_ranges(reader, board, folder, plan, pair, worker, after_chunk=report)
        report()
        if len(board.done()) < plan.ranges:
            time.sleep(poll_s)

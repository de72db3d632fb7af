"""Re-encoding the corpus spread over every worker of the queue.

The worker running the reindex (or deploy) job reads the log offset O, lists the document ids into `ranges`
files, and queues one helper task per other live worker (`xling.reindex_range`). Every participant, the job's
own worker included, claims ranges on the `RangeBoard` (state/reindex_ranges.py) until none is left, encoding
each into a part file written whole (a temporary file renamed into place). The job's worker then waits for
ranges leased to others, taking over any whose lease lapses (its worker died), and merges the parts into the
index it saves at O, as a single-worker build would. Each range's file holds that range's documents once,
however many times it was encoded, so nothing is missing or doubled.

Only this module knows the part files' layout; Celery stays in worker/celery_app.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from xling.state.reindex_ranges import RangeBoard
from xling.state.settings import Settings
from xling.worker.build_tiers import open_corpus

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CENTERING_DIR = "centering"
ENCODE_CHUNK = 128  # documents read and encoded together; the lease is renewed after each


@dataclass(frozen=True)
class RangePlan:
    job_id: str
    version: str
    source_path: str
    source_name: str
    offset: str  # the log offset the merged index has applied
    sizes: list[int]  # documents listed in each range
    centred: bool

    @property
    def ranges(self) -> int:
        return len(self.sizes)


def ranges_folder(settings: Settings, job_id: str) -> Path:
    return settings.indexes_dir / ".ranges" / job_id


def write_plan(
    reader: Corpus, folder: Path, job_id: str, source: ModelSource, ranges: int, centering: Centering | None
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
                     centering is not None)
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


def encode_range(reader: Corpus, folder: Path, number: int, pair: ServingPair, renew: Callable[[], bool]) -> int:
    """Encode one range into part-<number>.npz (written whole); returns the documents encoded. Ids deleted since
    the plan are skipped (the apis' replay removes them anyway)."""
    ids = json.loads((folder / f"ids-{number}.json").read_text(encoding="utf-8"))
    kept: list[str] = []
    langs: list[str] = []
    metadata: list[str] = []
    blocks: list[np.ndarray] = []
    for start in range(0, len(ids), ENCODE_CHUNK):
        found = reader.get_many(ids[start : start + ENCODE_CHUNK])
        if found:
            docs = list(found.values())
            blocks.append(pair.document_vectors(docs))
            kept += list(found)
            langs += [doc.lang or "" for doc in docs]
            metadata += [json.dumps(doc.metadata, ensure_ascii=False) for doc in docs]
        if not renew():
            raise LeaseLost(f"range {number}")
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, pair.encoder.dim), np.float32)
    temporary = folder / f".part-{number}.{os.getpid()}.npz"
    np.savez(temporary, ids=np.array(kept, dtype=str), langs=np.array(langs, dtype=str),
             metadata=np.array(metadata, dtype=str), vectors=vectors.astype(np.float32))
    os.replace(temporary, folder / f"part-{number}.npz")
    return len(kept)


def encode_ranges(
    reader: Corpus, board: RangeBoard, folder: Path, pair: ServingPair, worker: str,
    between: Callable[[], None] | None = None,
) -> int:
    """Claim and encode ranges until none is free; returns how many this worker finished."""
    finished = 0
    while (number := board.claim(worker)) is not None:

        def renew(held: int = number) -> bool:
            return board.renew(held, worker)

        try:
            count = encode_range(reader, folder, number, pair, renew)
        except LeaseLost:
            log.warning("reindex range taken over by another worker", extra={"range": number})
            continue
        board.finish(number)
        finished += 1
        log.info("reindex range encoded", extra={"range": number, "documents": count, "worker": worker})
        if between is not None:
            between()
    return finished


def merge_ranges(folder: Path, plan: RangePlan, pair: ServingPair, spec: IndexSpec) -> ServingPair:
    """The index of every range's part, at the plan's offset."""
    index = VectorIndex(pair.encoder.dim, pair.encoder.version, spec)
    for number in range(plan.ranges):
        with np.load(folder / f"part-{number}.npz") as part:
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
            return encode_ranges(corpus, board, folder, plan_encoder(plan, folder, settings), worker)
    except FileNotFoundError:
        return 0  # the job finished (or was cancelled) and removed the ranges meanwhile


def wait_for_ranges(
    reader: Corpus, board: RangeBoard, folder: Path, plan: RangePlan, pair: ServingPair, worker: str,
    tick: Callable[[int], None], poll_s: float = 0.2,
) -> None:
    """The job's worker: encode ranges, then wait for those others hold, taking over any whose lease lapses.
    `tick(documents done)` runs between ranges and while waiting (progress, cancellation)."""

    def done_documents() -> int:
        return sum(plan.sizes[n] for n in board.done())

    while len(board.done()) < plan.ranges:
        encode_ranges(reader, board, folder, pair, worker, between=lambda: tick(done_documents()))
        tick(done_documents())
        if len(board.done()) < plan.ranges:
            time.sleep(poll_s)

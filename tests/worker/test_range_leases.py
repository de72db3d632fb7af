"""A spread reindex on a starved machine: a range's lease measures whether its worker lives, not how fast it
encodes; a range whose lease really lapsed is finished by another worker without encoding again what its first
holder wrote. Real Redis; an encoder fake that is as slow as the test needs."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from tests.synthetic import DictCorpus
from xling.models.index.vector_index import IndexSpec
from xling.models.resolve import ModelSource
from xling.state.docstore import StoredDoc
from xling.state.keys import RedisKeys
from xling.state.reindex_ranges import RangeBoard
from xling.worker.reindex import (
    LeaseLost,
    chunk_path,
    encode_range,
    encode_ranges,
    merge_ranges,
    read_plan,
    wait_for_ranges,
    write_plan,
)

DIM = 4


class SlowEncoding:
    """What a ServingPair offers the range encoder, at `seconds_per_chunk`; counts each text it encodes."""

    def __init__(self, seconds_per_chunk: float) -> None:
        self.seconds_per_chunk = seconds_per_chunk
        self.encoded: Counter[str] = Counter()
        self.encoder = type("FakeEncoder", (), {"dim": DIM, "version": "v1"})()
        self.centering = None
        self._lock = threading.Lock()

    def document_vectors(self, docs: Sequence[StoredDoc]) -> np.ndarray:
        time.sleep(self.seconds_per_chunk)
        with self._lock:
            self.encoded.update(doc.text for doc in docs)
        return np.ones((len(docs), DIM), np.float32) / 2


@pytest.fixture
def corpus() -> DictCorpus:
    return DictCorpus({f"d{i}": StoredDoc(f"text {i}", "en", {"n": i}) for i in range(16)})


def board_for(redis_url: str, job: str, ranges: int, lease_s: float) -> RangeBoard:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return RangeBoard(client, RedisKeys("test"), job, ranges, lease_s)


def test_chunks_slower_than_the_lease_finish_once_without_taking_over_from_itself(
    redis_url: str, corpus: DictCorpus, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    lease_s = 0.3
    source = ModelSource(tmp_path, "v1", "folder", "tiny")
    plan = write_plan(corpus, tmp_path / "ranges", "starved", source, 2, None, chunk=4)
    board = board_for(redis_url, "starved", plan.ranges, lease_s)
    pair: Any = SlowEncoding(seconds_per_chunk=2 * lease_s)  # every chunk outlasts the lease twice
    progress: list[int] = []
    with caplog.at_level(logging.INFO, logger="xling.worker.reindex"):
        wait_for_ranges(corpus, board, tmp_path / "ranges", plan, pair, "w1", progress.append)
    assert board.done() == {0, 1}
    assert set(pair.encoded) == {doc.text for doc in corpus.docs.values()}
    assert max(pair.encoded.values()) == 1  # no range started over
    assert not [r for r in caplog.records if "lost" in r.getMessage()]
    assert progress[-1] == 16 and progress == sorted(progress)  # chunk by chunk, never backwards
    merged = merge_ranges(tmp_path / "ranges", plan, pair, IndexSpec())
    assert len(merged.index) == 16


class LapsingAfter:
    """A lease held for `chunks` commit points, then lost: the worker stopped (SIGSTOP) past its lease."""

    def __init__(self, chunks: int) -> None:
        self.left = chunks

    @property
    def held(self) -> bool:
        self.left -= 1
        return self.left >= 0


def test_a_lost_range_is_finished_by_another_worker_from_the_chunks_already_written(
    redis_url: str, corpus: DictCorpus, tmp_path: Path,
) -> None:
    lease_s = 0.3
    folder = tmp_path / "ranges"
    plan = write_plan(corpus, folder, "lost", ModelSource(tmp_path, "v1", "folder", "tiny"), 1, None, chunk=4)
    board = board_for(redis_url, "lost", plan.ranges, lease_s)
    first: Any = SlowEncoding(0)
    claim = board.claim("stopped")
    assert claim is not None
    with pytest.raises(LeaseLost):
        encode_range(corpus, folder, plan, claim.number, first, LapsingAfter(chunks=2))  # type: ignore[arg-type]
    assert [chunk_path(folder, 0, c).exists() for c in range(4)] == [True, True, False, False]
    assert board.claim("other") is None  # the stopped worker's lease has not lapsed yet: nobody may take it
    time.sleep(lease_s + 0.1)
    second: Any = SlowEncoding(0)
    assert encode_ranges(corpus, board, folder, plan, second, "other") == 1
    # The two chunks left, not the whole range (the first holder encoded the third but could not commit it).
    assert sum(second.encoded.values()) == 8 and set(second.encoded) == {f"text {i}" for i in range(8, 16)}
    assert board.done() == {0} and board.holders() == {}
    merged = merge_ranges(folder, plan, second, IndexSpec())
    assert len(merged.index) == 16
    assert read_plan(folder) == plan

"""The applier alone, on a real Redis and a tiny real encoder: the index follows the document log."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import doc_store_call
from xling.models.encoder import Encoder
from xling.models.index.lexical import LexicalIndex
from xling.models.index.vector_index import VectorIndex
from xling.serving.applier import Applier, Watermark
from xling.serving.metrics import Metrics
from xling.state.docstore import START_OFFSET, DocReader, StoredDoc
from xling.state.indexing import ServingPair, catch_up_lexical
from xling.state.retention import LogTrimmed


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder(tiny_model, version="tiny", device="cpu")


def store(redis_url: str, action: str, *args: object) -> None:
    """Write through the real DocStore (hash and log in one transaction), as the api's routes do."""
    doc_store_call(redis_url, action, *args)


def fresh_pair(encoder: Encoder) -> ServingPair:
    return ServingPair(encoder, VectorIndex(encoder.dim, encoder.version), START_OFFSET)


def snapshot(pair: ServingPair, folder: Path) -> None:
    assert isinstance(pair.index, VectorIndex)
    pair.index.save(folder / pair.version, pair.applied_offset)


def make_applier(
    doc_reader: DocReader, pair: ServingPair, tmp_path: Path, watermark: Watermark | None = None, **options: object
) -> Applier:
    settings: dict[str, object] = {"batch": 2, "snapshot_every_entries": 1_000, "snapshot_interval_s": 3_600}
    settings.update(options)
    return Applier(
        doc_reader,
        lambda: pair,
        watermark or Watermark(),
        Metrics(),
        persist=lambda p: snapshot(p, tmp_path),
        **settings,  # type: ignore[arg-type]
    )


def ids(pair: ServingPair) -> list[str]:
    return sorted(doc.ext_id for doc in pair.index.documents())


def nearest(pair: ServingPair, text: str) -> str:
    (found,) = pair.index.search(pair.encoder.encode([text], "query"), 1)
    return found[0].ext_id


def test_catch_up_applies_upserts_replacements_and_deletes(
    redis_url: str, doc_reader: DocReader, encoder: Encoder, tmp_path: Path
) -> None:
    store(redis_url, "upsert", [("a", StoredDoc("the cat sleeps", "en")), ("b", StoredDoc("der Hund bellt", "de"))])
    store(redis_url, "upsert", [("c", StoredDoc("a red car", "en"))])
    store(redis_url, "upsert", [("a", StoredDoc("a quiet library", "en"))])  # replaces a's text
    store(redis_url, "delete", ["b"])
    pair = fresh_pair(encoder)
    applier = make_applier(doc_reader, pair, tmp_path)
    assert applier.catch_up() == 5  # in batches of two
    assert ids(pair) == ["a", "c"] and pair.applied_offset == doc_reader.last_offset()
    vector = pair.index.search(encoder.encode(["a quiet library"], "passage"), 1)[0][0]
    assert vector.ext_id == "a" and vector.score == pytest.approx(1.0, abs=1e-4)  # the new text, not the old
    assert applier.catch_up() == 0


def test_replaying_the_log_again_converges_to_the_same_index(
    redis_url: str, doc_reader: DocReader, encoder: Encoder, tmp_path: Path
) -> None:
    store(redis_url, "upsert", [(f"d{i}", StoredDoc(f"document number {i}", "en")) for i in range(6)])
    store(redis_url, "delete", ["d2"])
    store(redis_url, "upsert", [("d3", StoredDoc("changed text", "en"))])
    once = fresh_pair(encoder)
    make_applier(doc_reader, once, tmp_path).catch_up()
    twice = fresh_pair(encoder)
    make_applier(doc_reader, twice, tmp_path).catch_up()
    twice.applied_offset = START_OFFSET  # as a replay from an older snapshot would
    make_applier(doc_reader, twice, tmp_path).catch_up()
    assert ids(once) == ids(twice) == ["d0", "d1", "d3", "d4", "d5"]
    probe = encoder.encode(["changed text", "document number 4"], "query")
    np.testing.assert_allclose(
        [n.score for hits in once.index.search(probe, 3) for n in hits],
        [n.score for hits in twice.index.search(probe, 3) for n in hits],
        rtol=1e-5,
    )


def test_the_running_applier_tails_new_writes_advances_the_watermark_and_snapshots(
    redis_url: str, doc_reader: DocReader, encoder: Encoder, tmp_path: Path
) -> None:
    pair, watermark = fresh_pair(encoder), Watermark()
    applier = make_applier(doc_reader, pair, tmp_path, watermark, snapshot_every_entries=3)
    applier.start()
    try:
        store(redis_url, "upsert", [(f"d{i}", StoredDoc(f"text {i}", "en")) for i in range(4)])
        last = doc_reader.last_offset()
        deadline = time.monotonic() + 30
        while pair.applied_offset != last or applier.snapshot_offset is None:
            assert time.monotonic() < deadline, "the applier did not apply the writes and snapshot"
            time.sleep(0.05)
        assert asyncio.run(watermark.wait_for(last, timeout=1))  # what the api's writes wait on
    finally:
        applier.stop()
    loaded, offset = VectorIndex.load(tmp_path / "tiny", "tiny", encoder.dim)
    assert offset == last and sorted(d.ext_id for d in loaded.documents()) == ids(pair)


def test_a_log_trimmed_past_the_offset_hands_over_to_the_rebuild(
    doc_reader: DocReader, encoder: Encoder, tmp_path: Path
) -> None:
    rebuilt = threading.Event()

    def trimmed(offset: str) -> None:
        if not rebuilt.is_set():
            raise LogTrimmed(f"trimmed past {offset}")

    applier = make_applier(doc_reader, fresh_pair(encoder), tmp_path, check_log=trimmed, on_log_trimmed=rebuilt.set)
    applier.start()
    try:
        assert rebuilt.wait(10), "on_log_trimmed was not called"
    finally:
        applier.stop(final_snapshot=False)
    assert applier.last_error is None


def test_a_lexical_index_behind_the_vector_index_is_caught_up_too(
    redis_url: str, doc_reader: DocReader, encoder: Encoder, tmp_path: Path
) -> None:
    """At start-up each index is loaded or built on its own, so their offsets may differ: the applier starts at
    the older one, and both end up holding the same documents."""
    store(redis_url, "upsert", [("early", StoredDoc("the early bird", "en"))])
    lexical = LexicalIndex(tmp_path / "lexical")
    catch_up_lexical(doc_reader, lexical, 10, check_log=lambda offset: None)
    store(redis_url, "upsert", [("late", StoredDoc("a late harvest", "en"))])
    store(redis_url, "delete", ["early"])
    pair = fresh_pair(encoder)
    make_applier(doc_reader, pair, tmp_path).catch_up()  # the vector index alone reaches the end of the log
    applier = make_applier(doc_reader, pair, tmp_path, lexical=lexical)
    applier.catch_up()
    assert [hit.ext_id for hit in lexical.search("late harvest early bird", 10)] == ["late"]
    assert ids(pair) == ["late"] and lexical.applied_offset == pair.applied_offset == doc_reader.last_offset()

"""The applier: one thread per api process that tails the doc log into the serving index."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from xling.models.index.lexical import LexicalIndex
from xling.serving.metrics import Metrics
from xling.state.docstore import START_OFFSET, DocReader, LogEntry, offset_key
from xling.state.indexing import ServingPair, apply_entries
from xling.state.polling import poll
from xling.state.retention import LogTrimmed

log = logging.getLogger(__name__)


class Watermark:
    """The newest applied doc-log offset; coroutines on the event loop wait for it to pass theirs."""

    def __init__(self) -> None:
        self._offset = offset_key(START_OFFSET)
        self._lock = threading.Lock()
        self._waiters: list[tuple[tuple[int, int], asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def advance(self, offset: str) -> None:
        """Called from the applier thread."""
        key = offset_key(offset)
        with self._lock:
            self._offset = max(self._offset, key)
            ready = [w for w in self._waiters if w[0] <= self._offset]
            self._waiters = [w for w in self._waiters if w[0] > self._offset]
        for _, loop, future in ready:
            loop.call_soon_threadsafe(_resolve, future)

    async def wait_for(self, offset: str, timeout: float) -> bool:
        """True once `offset` is applied, False if `timeout` passes first."""
        key = offset_key(offset)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if key <= self._offset:
                return True
            self._waiters.append((key, loop, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            with self._lock:
                self._waiters = [w for w in self._waiters if w[2] is not future]
            return False


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SharedIndex(Protocol):
    """An index that every api replica searches (a Qdrant collection): one replica at a time writes the log into
    it and records how far it got; the others follow that record (state/qdrant_store.py)."""

    def may_write(self, pair: ServingPair) -> bool: ...

    def written_to(self, pair: ServingPair) -> str | None: ...

    def record(self, pair: ServingPair) -> None: ...


FOLLOW_POLL_MS = 20  # how often a replica that does not write looks at the writer's progress


class Applier:
    """Reads the log after the serving pair's offset in batches, applies them, and snapshots now and then.

    With a shared index, only the replica that holds its writer lease writes vectors (and records its offset
    after every batch); the others apply the log to their own lexical index only and take the writer's
    recorded offset as their index's. A write is reported applied here once both have passed it."""

    def __init__(
        self,
        reader: DocReader,
        get_pair: Callable[[], ServingPair],
        watermark: Watermark,
        metrics: Metrics,
        *,
        persist: Callable[[ServingPair], None],
        batch: int,
        snapshot_every_entries: int,
        snapshot_interval_s: float,
        check_log: Callable[[str], None] = lambda offset: None,
        on_log_trimmed: Callable[[], None] = lambda: None,
        lexical: LexicalIndex | None = None,
        shared: SharedIndex | None = None,
    ) -> None:
        """`persist(pair)` snapshots the pair (HotSwap.persist); `check_log(offset)` raises LogTrimmed when
        the log no longer reaches back to `offset`;
        `on_log_trimmed` then rebuilds the index from the documents (xling.state.retention). The same entries
        go to `lexical`, which a model swap leaves alone."""
        self._reader = reader
        self._get_pair = get_pair
        self._watermark = watermark
        self._metrics = metrics
        self._persist = persist
        self._batch = batch
        self._snapshot_every = snapshot_every_entries
        self._snapshot_interval = snapshot_interval_s
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._check_log = check_log
        self._on_log_trimmed = on_log_trimmed
        self._lexical = lexical
        self._shared = shared
        self.snapshot_offset: str | None = None  # the offset of this replica's last snapshot of its version
        # Held for a whole step; a hot swap holds it for its final catch-up and the swap itself.
        self.lock = threading.Lock()

    def step(self, block_ms: int | None) -> int:
        """Apply at most one batch; returns the number of log entries applied."""
        waited_on = self._get_pair()
        writes = self._writes(waited_on)
        if block_ms:  # wait outside the lock; a follower also wakes soon to see the writer's progress
            start = self._start(waited_on, writes)
            if start is not None:
                self._reader.wait_for_log(start, block_ms if writes else min(block_ms, FOLLOW_POLL_MS))
            else:
                time.sleep(FOLLOW_POLL_MS / 1000)
        with self.lock:
            pair = self._get_pair()
            if pair is not waited_on:  # a swap changed the pair while this waited
                writes = self._writes(pair)
            if not writes:
                self._follow(pair)
            start = self._start(pair, writes)
            entries = [] if start is None else self._read(start)
            if entries:
                apply_entries(entries, self._reader, pair if writes else None, self._lexical)
                if writes and self._shared is not None:
                    self._shared.record(pair)
        if entries:  # before the watermark: a write acknowledged once it passes sees its own count here too
            self._metrics.index_size.set(len(pair.index))
        self._watermark.advance(self._applied(pair, writes))
        if not entries:
            self._metrics.applier_lag.set(0)
            return 0
        self._since_snapshot += len(entries)
        self._metrics.applied_entries.inc(len(entries))
        newest_ms = offset_key(entries[-1].offset)[0]
        self._metrics.applier_lag.set(max(0.0, time.time() - newest_ms / 1000) if len(entries) == self._batch else 0)
        return len(entries)

    def _writes(self, pair: ServingPair) -> bool:
        return self._shared is None or self._shared.may_write(pair)

    def _read(self, start: str) -> list[LogEntry]:
        self._check_log(start)
        return self._reader.read_log(start, self._batch)

    def _follow(self, pair: ServingPair) -> None:
        """A replica that does not write takes the writer's recorded offset as its index's."""
        assert self._shared is not None
        written = self._shared.written_to(pair)
        if written is not None and offset_key(written) > offset_key(pair.applied_offset):
            pair.applied_offset = written

    def _start(self, pair: ServingPair, writes: bool = True) -> str | None:
        """Where the next batch starts: the older of the two indexes' offsets. They differ only after a start-up
        (each index was loaded or built on its own) and meet at the first batch; applying an entry an index
        already holds again changes nothing. A replica that does not write reads for its lexical index only
        (None: nothing to read)."""
        lexical = self._lexical.applied_offset if self._lexical is not None else None
        if not writes:
            return lexical
        if lexical is None:
            return pair.applied_offset
        return min(pair.applied_offset, lexical, key=offset_key)

    def _applied(self, pair: ServingPair, writes: bool) -> str:
        """What this replica serves up to: its index's offset, and, when it follows a writer, no further than its
        own lexical index either."""
        lexical = self._lexical.applied_offset if self._lexical is not None else None
        if writes or lexical is None:
            return pair.applied_offset
        return min(pair.applied_offset, lexical, key=offset_key)

    def catch_up(self) -> int:
        """Apply everything in the log now; used before the service reports ready."""
        applied = 0
        while n := self.step(block_ms=None):
            applied += n
        return applied

    def snapshot(self) -> None:
        pair = self._get_pair()
        if self._shared is not None and not self._shared.may_write(pair):
            self._since_snapshot = 0  # the writer records the shared index's progress, not a follower
            return
        self._persist(pair)
        self.snapshot_offset = pair.applied_offset
        self._since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._metrics.snapshots.inc()
        log.info("index snapshot written", extra={"version": pair.version, "offset": pair.applied_offset})

    def _snapshot_due(self) -> bool:
        if self._since_snapshot == 0:
            return False
        overdue = time.monotonic() - self._last_snapshot >= self._snapshot_interval
        return self._since_snapshot >= self._snapshot_every or overdue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="applier", daemon=True)
        self._thread.start()

    def stop(self, final_snapshot: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if final_snapshot and self._since_snapshot:
            self.snapshot()

    def _run(self) -> None:
        poll(self._tail_once, self._stop, every_s=0, retry_s=0.5, what="applier", logger=log, wait_first=False,
             on_outcome=self._record)

    def _tail_once(self) -> None:
        """One step (it waits up to 250 ms for new entries), then a snapshot when one is due. A log trimmed past
        this replica's offset rebuilds the index; a failed rebuild is retried at the next step, which finds the
        log trimmed again."""
        try:
            self.step(block_ms=250)
        except LogTrimmed:
            self._on_log_trimmed()
            return
        if self._snapshot_due():
            self.snapshot()

    def _record(self, error: str | None) -> None:
        self.last_error = error

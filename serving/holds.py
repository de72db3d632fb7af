"""This replica's hold on the doc log (see `xling.state.retention`): the oldest offset it may still replay
from, told to Redis while it is needed, and the trim behind every replica's hold."""

from __future__ import annotations

import threading
from collections.abc import Callable

from xling.state.docstore import offset_key
from xling.state.retention import LogRetention


class LogHolds:
    """Offsets this replica needs: its index's and last snapshot's (from `serving_offsets`), and those of builds
    and replays in progress, pinned by name while they run."""

    def __init__(
        self, retention: LogRetention, holder: str, ttl_s: float, serving_offsets: Callable[[], list[str]]
    ) -> None:
        self.retention = retention
        self.holder = holder
        self.ttl_s = ttl_s
        self._serving_offsets = serving_offsets
        self._pins: dict[str, str] = {}  # builds and replays in progress: name -> the offset they replay from
        self._lock = threading.Lock()  # pinned by loader, swap and applier threads; read by the retention one

    def pin(self, name: str, offset: str) -> None:
        """Keep the log from `offset` on while a build or replay runs; told to Redis at once."""
        with self._lock:
            self._pins[name] = offset
        self.hold()

    def unpin(self, name: str) -> None:
        with self._lock:
            self._pins.pop(name, None)

    def oldest(self) -> str | None:
        """The oldest offset this replica may replay from."""
        with self._lock:
            offsets = [*self._pins.values(), *self._serving_offsets()]
        return min(offsets, key=offset_key) if offsets else None

    def hold(self) -> None:
        offset = self.oldest()
        if offset is not None:
            self.retention.hold(self.holder, offset, self.ttl_s)

    def trimmed_to(self) -> str | None:
        """Where the log was last trimmed (shared by every replica)."""
        return self.retention.trimmed_to()

    def hold_and_trim(self) -> None:
        """One round of the retention loop. The hold is not released at stop: it lapses after its TTL, so a
        restart within that time replays from its snapshot instead of encoding every document."""
        self.hold()
        self.retention.trim()

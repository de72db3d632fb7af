"""A Qdrant client from the settings: of the configured server, or of the embedded local mode (XLING_QDRANT_PATH),
which this process alone may open and which is called one call at a time."""

from __future__ import annotations

import threading
import warnings
from typing import Any, cast

from qdrant_client import QdrantClient

from xling.state.settings import Settings


def qdrant_client(settings: Settings) -> QdrantClient:
    """A client of the configured server, or of the embedded local mode in `qdrant_path`."""
    if settings.qdrant_path is not None:
        settings.qdrant_path.mkdir(parents=True, exist_ok=True)
        return cast(QdrantClient, _OneCallAtATime(QdrantClient(path=str(settings.qdrant_path))))
    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    return QdrantClient(url=settings.qdrant_url, api_key=key, timeout=60)


class _OneCallAtATime:
    """The local mode keeps its points in plain Python and numpy structures with no locking of its own, and the
    api calls it from the applier thread and from search threads at once: one call at a time. (A server
    client needs none of this: the server orders concurrent requests itself.)"""

    def __init__(self, client: QdrantClient) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock, warnings.catch_warnings():
                # It scans every point, and says on each search that search parameters change nothing.
                warnings.filterwarnings("ignore", message="Local mode performs exact")
                return attribute(*args, **kwargs)

        return call

"""Every Redis key xling uses; no other module spells one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "xling"

    @property
    def docs(self) -> str:
        """Hash: document id -> JSON {text, lang, metadata}."""
        return f"{self.prefix}:docs"

    @property
    def doclog(self) -> str:
        """Stream: one entry {op: upsert|delete, id} per document write, in commit order."""
        return f"{self.prefix}:doclog"

    @property
    def log_holds(self) -> str:
        """Hash: holder -> JSON {offset, until}; the log is trimmed only behind the smallest live hold."""
        return f"{self.prefix}:doclog:holds"

    @property
    def log_trimmed_to(self) -> str:
        """String: entries before this offset may be trimmed away (it only moves forward)."""
        return f"{self.prefix}:doclog:trimmed_to"

    @property
    def active_model(self) -> str:
        """String: the model version every api should serve."""
        return f"{self.prefix}:model:active"

    @property
    def previous_model(self) -> str:
        """String: the version that served before the last activation ("" = the configured default)."""
        return f"{self.prefix}:model:previous"

    @property
    def jobs(self) -> str:
        """Sorted set: job id scored by creation time (newest first = highest score)."""
        return f"{self.prefix}:jobs"

    @property
    def running_jobs(self) -> str:
        """Set: ids of jobs whose status is running (what the heartbeat sweep checks)."""
        return f"{self.prefix}:jobs:running"

    @property
    def workers(self) -> str:
        """Sorted set: worker name scored by its last heartbeat (unix time); who consumes the job queue."""
        return f"{self.prefix}:workers"

    def job(self, job_id: str) -> str:
        """Hash: one job's fields (DESIGN §7)."""
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Stream: a job's progress and state changes, for server-sent events."""
        return f"{self.prefix}:job:{job_id}:events"

    def recalibration(self, version: str) -> str:
        """String: the id of the last centring recalibration job queued for this version."""
        return f"{self.prefix}:centering:recalibration:{version}"

    def recalibration_throttle(self, version: str) -> str:
        """String with a TTL: a centring recalibration of this version was queued lately."""
        return f"{self.prefix}:centering:recalibration-throttle:{version}"

    @property
    def qdrant_collections(self) -> str:
        """Hash: "<version>/<means id or raw>" -> JSON {collection, offset}: the Qdrant collection that serves
        that model version with those means, and the doc-log offset it has applied."""
        return f"{self.prefix}:qdrant:collections"

    @property
    def qdrant_retired(self) -> str:
        """Sorted set: collection name scored by when a rebuild replaced it (dropped after a grace period)."""
        return f"{self.prefix}:qdrant:retired"

    def qdrant_lengths(self, collection: str) -> str:
        """Hash: "docs:<partition>" and "terms:<partition>" -> the collection's documents and their BM25 lengths
        per lexical partition (the mean document length its BM25 vectors are written with)."""
        return f"{self.prefix}:qdrant:lengths:{collection}"

    def qdrant_writer(self, collection: str) -> str:
        """String with a TTL: the api replica that writes the log into this collection (the others follow)."""
        return f"{self.prefix}:qdrant:writer:{collection}"

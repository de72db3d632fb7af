"""Prometheus metrics; one registry per app so several apps can live in one process (tests, replicas)."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xling.serving.memory import heap_usage


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "xling_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.search_batch_size = Histogram(
            "xling_search_batch_size",
            "Queries per micro-batch (one encoder forward, one FAISS search)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.index_size = Gauge("xling_index_vectors", "Vectors in the serving index", registry=self.registry)
        self.applier_lag = Gauge(
            "xling_applier_lag_seconds",
            "Age of the newest doc-log entry not yet applied (0 = caught up)",
            registry=self.registry,
        )
        self.applied_entries = Counter(
            "xling_applied_log_entries", "Doc-log entries applied to the index", registry=self.registry
        )
        self.snapshots = Counter("xling_snapshots", "Index snapshots written", registry=self.registry)
        self.swaps = Counter("xling_model_swaps", "Hot swaps of the serving model", registry=self.registry)
        self.jobs_submitted = Counter("xling_jobs_submitted", "Jobs queued, by type", ["type"], registry=self.registry)
        self.heap = Gauge(
            "xling_heap_bytes",
            "C heap of the process: in_use (live blocks) and free (freed blocks the heap keeps), glibc only",
            ["state"],
            registry=self.registry,
        )
        if heap_usage() is not None:
            for state in ("in_use", "free"):
                self.heap.labels(state).set_function(partial(_heap_bytes, state))


def _heap_bytes(state: str) -> float:
    usage = heap_usage()
    return float(usage[state]) if usage else 0.0

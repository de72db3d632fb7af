"""The job store: one Redis hash per job (our own, not Celery's result backend, which expires).

Status moves queued -> running -> succeeded | failed | cancelled (and queued -> cancelled | failed);
every transition is one Lua script, so two parties (a worker finishing, a sweep declaring the worker
lost) cannot both win. Used by the api (sync routes run on FastAPI's thread pool) and the worker.

One truth for a job's state: once a job is final, nothing its worker does shows in it. Beats and progress are
written only while the job is running (a script each), and a worker told so by a refused beat stops at its next
commit point (worker/runner.py, `JobContext.checkpoint`). The sweep fails only a job whose beats lapsed
(`heartbeat_timeout_s`), so a worker whose beat was just accepted has that long to commit.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from xling.state.keys import RedisKeys

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL: tuple[Status, ...] = ("succeeded", "failed", "cancelled")
ALLOWED_FROM: dict[Status, tuple[Status, ...]] = {
    "running": ("queued",),
    "succeeded": ("running",),
    "failed": ("queued", "running"),
    "cancelled": ("queued", "running"),
}
JSON_FIELDS = ("params", "progress", "metrics", "decision")
EVENTS_KEPT = 1_000

# KEYS: job hash, running set, events stream; ARGV: new status, now, job id, allowed from..., then field/value pairs
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
local allowed = false
local n_from = tonumber(ARGV[4])
for i = 5, 4 + n_from do
  if ARGV[i] == current then allowed = true end
end
if not allowed then return {0, current} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 5 + n_from, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[1] == 'running' then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2], 'heartbeat', ARGV[2], 'progress_at', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[3])
  -- The progress says the job is over, and where it was when it ended.
  local progress = cjson.decode(redis.call('HGET', KEYS[1], 'progress') or '{}')
  if progress['stage'] ~= nil then progress['last_stage'] = progress['stage'] end
  progress['stage'] = ARGV[1]
  redis.call('HSET', KEYS[1], 'progress', cjson.encode(progress))
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '1000', '*', 'type', 'status', 'status', ARGV[1])
return {1, current}
"""

# KEYS: job hash, events stream; ARGV: now, progress JSON or '', '1' when the progress advanced. Written only
# while the job runs; 1 if written.
_BEAT = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'heartbeat', ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'type', 'progress', 'data', ARGV[2])
end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'progress_at', ARGV[1]) end
return 1
"""

NO_WORKER = "no worker is consuming the job queue: queued jobs wait until one starts"


class JobNotFound(KeyError):
    pass


@dataclass
class Job:
    id: str
    type: str
    status: Status
    params: dict[str, Any]
    created_at: float
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat: float | None = None
    progress_at: float | None = None  # when its progress last advanced (its start, before any)
    cancel_requested: bool = False
    retry_of: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Job:
        def number(key: str) -> float | None:
            return float(raw[key]) if raw.get(key) else None

        return cls(
            id=raw["id"],
            type=raw["type"],
            status=cast(Status, raw["status"]),
            params=json.loads(raw.get("params") or "{}"),
            created_at=float(raw["created_at"]),
            progress=json.loads(raw.get("progress") or "{}"),
            metrics=json.loads(raw.get("metrics") or "{}"),
            decision=json.loads(raw.get("decision") or "{}"),
            model_version=raw.get("model_version") or None,
            error=raw.get("error") or None,
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            heartbeat=number("heartbeat"),
            progress_at=number("progress_at"),
            cancel_requested=raw.get("cancel_requested") == "1",
            retry_of=raw.get("retry_of") or None,
        )

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if k in JSON_FIELDS else ("" if v is None else str(v)) for k, v in fields.items()}


class JobStore:
    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        # Any: the client decodes responses to str, which redis-py's stubs cannot express.
        self.client: Any = client
        self.keys = keys
        self._transition = client.register_script(_TRANSITION)
        self._beat = client.register_script(_BEAT)

    def create(self, job_type: str, params: dict[str, Any], retry_of: str | None = None) -> Job:
        job_id = uuid.uuid4().hex
        now = time.time()
        fields = {"id": job_id, "type": job_type, "status": "queued", "params": params, "created_at": now}
        if retry_of:
            fields["retry_of"] = retry_of
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.job(job_id), mapping=_encode(fields))
            pipe.zadd(self.keys.jobs, {job_id: now})
            pipe.xadd(self.keys.job_events(job_id), {"type": "status", "status": "queued"}, maxlen=EVENTS_KEPT)
            pipe.execute()
        return self.get(job_id)

    def claim_recalibration(self, version: str, every_s: int) -> bool:
        """Whether this process may queue `version`'s next recalibration: none is queued or running, none was
        claimed within `every_s` (a failed one is not retried on every poll), and no other replica claimed it
        first (across replicas, one claim wins)."""
        if self.client.exists(self.keys.recalibration_throttle(version)):
            return False
        previous = self.client.get(self.keys.recalibration(version))
        if previous:
            try:
                if self.get(str(previous)).status in ("queued", "running"):
                    return False
            except JobNotFound:
                pass  # deleted since: ask again
        return bool(self.client.set(self.keys.recalibration_throttle(version), "1", nx=True, ex=every_s))

    def record_recalibration(self, version: str, job_id: str) -> None:
        self.client.set(self.keys.recalibration(version), job_id)

    def pending_recalibration(self, version: str) -> Job | None:
        """The recalibration of `version` queued or running now (the last one recorded), if any."""
        job_id = self.client.get(self.keys.recalibration(version))
        if not job_id:
            return None
        try:
            job = self.get(str(job_id))
        except JobNotFound:
            return None
        return None if job.final else job

    def get(self, job_id: str) -> Job:
        raw: Any = self.client.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(job_id)
        return Job.from_hash(raw)

    def page(self, offset: int = 0, limit: int = 20, status: str | None = None) -> tuple[list[Job], int]:
        """Newest first. With a status filter the whole index is scanned (jobs are few)."""
        if status is None:
            total = int(self.client.zcard(self.keys.jobs))
            ids: Any = self.client.zrevrange(self.keys.jobs, offset, offset + limit - 1)
            return [self.get(i) for i in ids], total
        matching = [
            job for job in (self.get(i) for i in self.client.zrevrange(self.keys.jobs, 0, -1)) if job.status == status
        ]
        return matching[offset : offset + limit], len(matching)

    def transition(self, job_id: str, status: Status, **fields: Any) -> bool:
        """Move to `status` if the current status allows it; returns whether it moved."""
        allowed = ALLOWED_FROM[status]
        args: list[str | int] = [status, repr(time.time()), job_id, len(allowed), *allowed]
        for key, value in _encode(fields).items():
            args += [key, value]
        moved, _ = self._transition(
            keys=[self.keys.job(job_id), self.keys.running_jobs, self.keys.job_events(job_id)], args=args
        )
        return bool(moved)

    def update(self, job_id: str, **fields: Any) -> None:
        self.client.hset(self.keys.job(job_id), mapping=_encode(fields))

    def report_progress(self, job_id: str, progress: dict[str, Any], advanced: bool = True) -> bool:
        """Record the progress (and a beat); `advanced`: it moved on since the last (what the stall sweep
        measures). False, and nothing written, when the job no longer runs."""
        return self._beat_with(job_id, json.dumps(progress), advanced)

    def beat(self, job_id: str) -> bool:
        """The job's worker is alive; False, and nothing written, when the job no longer runs."""
        return self._beat_with(job_id, "", False)

    def _beat_with(self, job_id: str, progress: str, advanced: bool) -> bool:
        keys = [self.keys.job(job_id), self.keys.job_events(job_id)]
        return bool(self._beat(keys=keys, args=[repr(time.time()), progress, "1" if advanced else "0"]))

    def request_cancel(self, job_id: str) -> Job:
        """Queued jobs are cancelled at once; running ones stop at their next step."""
        job = self.get(job_id)
        if job.final:
            return job
        self.client.hset(self.keys.job(job_id), "cancel_requested", "1")
        if job.status == "queued":
            self.transition(job_id, "cancelled", error="cancelled before it started")
        return self.get(job_id)

    def unfinished(self) -> list[Job]:
        """Queued and running jobs (a scan of the job index: jobs are few)."""
        jobs = (self.get(i) for i in self.client.zrevrange(self.keys.jobs, 0, -1))
        return [job for job in jobs if not job.final]

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.hget(self.keys.job(job_id), "cancel_requested") == "1")

    def sweep_lost(self, heartbeat_timeout_s: float) -> list[str]:
        """Mark running jobs whose heartbeat lapsed as failed: the worker died with them."""
        lost = []
        now = time.time()
        for job_id in self.client.smembers(self.keys.running_jobs):
            beat = self.client.hget(self.keys.job(job_id), "heartbeat")
            if beat is None or now - float(beat) > heartbeat_timeout_s:
                if self.transition(job_id, "failed", error="worker lost (no heartbeat)"):
                    lost.append(job_id)
        return lost

    def sweep_stalled(self, stall_timeout_s: float) -> list[str]:
        """Fail running jobs whose worker beats but whose progress has not advanced for `stall_timeout_s` (a job
        stuck in a wait, or a step far slower than any the operator allows); their worker is fenced by it."""
        stalled = []
        now = time.time()
        for job_id in self.client.smembers(self.keys.running_jobs):
            try:
                job = self.get(job_id)
            except JobNotFound:
                continue
            since = job.progress_at or job.started_at
            if since is None or now - since <= stall_timeout_s:
                continue
            stage = job.progress.get("stage", "starting")
            reason = (f"stalled: no progress for {now - since:.0f} s (stage {stage}; XLING_JOB_STALL_TIMEOUT_S="
                      f"{stall_timeout_s:g}); retry it with POST /jobs/{job_id}/retry")
            if self.transition(job_id, "failed", error=reason):
                stalled.append(job_id)
        return stalled

    # Workers ------------------------------------------------------------------------------------
    def worker_beat(self, name: str, timeout_s: float) -> None:
        """A worker says it is alive; entries silent for `timeout_s` are dropped on the way."""
        now = time.time()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.workers, {name: now})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now - timeout_s)
            pipe.execute()

    def worker_gone(self, name: str) -> None:
        self.client.zrem(self.keys.workers, name)

    def live_workers(self, timeout_s: float) -> list[str]:
        """Workers that beat within `timeout_s`: if none, queued jobs wait for nobody."""
        return list(self.client.zrangebyscore(self.keys.workers, time.time() - timeout_s, "+inf"))

    def events(self, job_id: str, after: str = "0-0", block_ms: int | None = None) -> list[tuple[str, dict[str, str]]]:
        reply: Any = self.client.xread({self.keys.job_events(job_id): after}, count=100, block=block_ms)
        return [(str(offset), fields) for offset, fields in reply[0][1]] if reply else []

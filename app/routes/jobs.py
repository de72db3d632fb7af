"""POST /jobs/{finetune,evaluate,experiment,reindex}, GET /jobs, GET/DELETE /jobs/{id}, events, retry."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field

from xling.app import job_requests
from xling.app.deps import (
    JobQueueDep,
    JobStoreDep,
    RegistryDep,
    SettingsDep,
    SwapDep,
    require_read_key,
    require_write_key,
)
from xling.app.schemas import (
    DIGITS,
    EvaluateRequest,
    ExperimentRequest,
    FinetuneRequest,
    JobAccepted,
    JobOut,
    JobsPage,
    ReindexRequest,
)
from xling.models.files import remove_dir
from xling.serving.job_queue import JobQueue
from xling.state.errors import Conflict, NotFound
from xling.state.jobs import parse_job
from xling.state.jobstore import FINAL, NO_WORKER, Job, JobNotFound, JobStore

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_read_key)])
guard = [Depends(require_write_key)]


def _outs(jobs: list[Job], queue: JobQueue) -> list[JobOut]:
    """Queued jobs say so when no worker consumes the queue (asked of Redis once per response)."""
    unserved = any(job.status == "queued" for job in jobs) and not queue.live_workers()
    return [JobOut(**asdict(job), warning=NO_WORKER if unserved and job.status == "queued" else None) for job in jobs]


def _out(job: Job, queue: JobQueue) -> JobOut:
    return _outs([job], queue)[0]


def _get(jobs: JobStore, job_id: str) -> Job:
    try:
        return jobs.get(job_id)
    except JobNotFound:
        raise NotFound(f"no job {job_id!r}") from None


def _accepted(job: Job) -> JobAccepted:
    return JobAccepted(job_id=job.id, status=job.status)


@router.post("/finetune", status_code=202, response_model=JobAccepted, dependencies=guard)
def finetune(body: FinetuneRequest, queue: JobQueueDep, registry: RegistryDep, settings: SettingsDep) -> JobAccepted:
    """Fine-tune with hybrid batches; `deploy` decides whether the new model then serves."""
    return _accepted(queue.submit(job_requests.finetune_job(body, settings, registry)))


@router.post("/evaluate", status_code=202, response_model=JobAccepted, dependencies=guard)
def evaluate(body: EvaluateRequest, queue: JobQueueDep, registry: RegistryDep, settings: SettingsDep) -> JobAccepted:
    return _accepted(queue.submit(job_requests.evaluate_job(body, settings, registry)))


@router.post("/experiment", status_code=202, response_model=JobAccepted, dependencies=guard)
def experiment(
    body: ExperimentRequest, queue: JobQueueDep, registry: RegistryDep, settings: SettingsDep
) -> JobAccepted:
    return _accepted(queue.submit(job_requests.experiment_job(body, settings, registry)))


@router.post("/reindex", status_code=202, response_model=JobAccepted, dependencies=guard)
def reindex(
    body: ReindexRequest, queue: JobQueueDep, registry: RegistryDep, settings: SettingsDep, swap: SwapDep,
    jobs: JobStoreDep,
) -> JobAccepted:
    """Encode the corpus with a registry version on the worker, then activate it (hot swap); with `recalibrate`,
    calibrate new centring means first and keep the version serving (every api swaps to the new means)."""
    job = queue.submit(job_requests.reindex_job(body, registry, settings, swap.default_version))
    if body.recalibrate:  # the job /healthz and /models/active name as the one that will calibrate
        jobs.record_recalibration(body.version, job.id)
    return _accepted(job)


@router.get("", response_model=JobsPage)
def list_jobs(
    jobs: JobStoreDep,
    queue: JobQueueDep,
    # Bounded: Redis ranges are 64-bit integers, and no one pages past a billion jobs.
    offset: Annotated[int, Field(ge=0, le=1_000_000_000), DIGITS, Query()] = 0,
    limit: Annotated[int, Field(ge=1, le=200), DIGITS, Query()] = 20,
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
) -> JobsPage:
    """Newest first."""
    page, count = jobs.page(offset, limit, status)
    return JobsPage(data=_outs(page, queue), count=count)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, jobs: JobStoreDep, queue: JobQueueDep) -> JobOut:
    return _out(_get(jobs, job_id), queue)


@router.delete("/{job_id}", response_model=JobOut, dependencies=guard)
def cancel_job(job_id: str, jobs: JobStoreDep, queue: JobQueueDep) -> JobOut:
    """Cooperative cancel: a queued job is cancelled at once, a running one stops at its next step."""
    job = _get(jobs, job_id)
    if job.final:
        raise Conflict(f"job {job_id} is already {job.status}")
    return _out(jobs.request_cancel(job_id), queue)


@router.post("/{job_id}/retry", status_code=202, response_model=JobAccepted, dependencies=guard)
def retry_job(job_id: str, jobs: JobStoreDep, queue: JobQueueDep) -> JobAccepted:
    """A failed or cancelled finetune runs again from its last checkpoint, as a new job."""
    job = _get(jobs, job_id)
    if job.type != "finetune" or job.status not in ("failed", "cancelled"):
        raise Conflict(f"only a failed or cancelled finetune can be retried; this is a {job.status} {job.type}")
    return _accepted(queue.submit(parse_job(job.type, job.params), retry_of=job.id))


REPORT_TYPES = {".json": "application/json", ".md": "text/markdown; charset=utf-8", ".png": "image/png"}


def _report_files(folder: FsPath) -> list[str]:
    """Report files (JSON, Markdown, PNG) under a job's report folder; model weights are not reports."""
    if not folder.is_dir():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in REPORT_TYPES and "models" not in p.relative_to(folder).parts
    )


@router.get("/{job_id}/report")
def job_report(
    job_id: str,
    jobs: JobStoreDep,
    settings: SettingsDep,
    format: Annotated[
        Literal["json", "markdown"], Query(description="json: files and contents; markdown: text")
    ] = "json",
) -> Response:
    """An evaluation, finetune (with eval_datasets) or experiment job's report: JSON (each JSON report and the
    list of files), or the Markdown reports joined. Charts: GET /jobs/{id}/report/files/{path}."""
    _get(jobs, job_id)
    folder = settings.reports_dir / job_id
    files = _report_files(folder)
    if not files:
        raise NotFound(
            f"job {job_id} has no report (yet): only evaluate, experiment and evaluated finetune jobs write one"
        )
    if format == "markdown":
        parts = [
            f"<!-- {name} -->\n" + (folder / name).read_text(encoding="utf-8") for name in files if name.endswith(".md")
        ]
        return Response("\n\n".join(parts), media_type=REPORT_TYPES[".md"])
    reports = {
        name: json.loads((folder / name).read_text(encoding="utf-8")) for name in files if name.endswith(".json")
    }
    return JSONResponse(_finite({"job_id": job_id, "files": files, "reports": reports}))


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric undefined for a set (cross-lingual mAP of a one-language set) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@router.get("/{job_id}/report/files/{path:path}")
def job_report_file(job_id: str, path: str, jobs: JobStoreDep, settings: SettingsDep) -> Response:
    """One report file (a chart, a Markdown table, a JSON report), by the path `GET /jobs/{id}/report` lists."""
    _get(jobs, job_id)
    if path not in _report_files(settings.reports_dir / job_id):  # only listed files: no traversal, no weights
        raise NotFound(f"job {job_id} has no report file {path!r}")
    file = settings.reports_dir / job_id / path
    return FileResponse(file, media_type=REPORT_TYPES[file.suffix])


@router.delete("/{job_id}/artefacts", status_code=204, dependencies=guard)
def delete_artefacts(job_id: str, jobs: JobStoreDep, settings: SettingsDep) -> Response:
    """Delete a finished job's reports (and an experiment's models under them). Registry versions a job
    made stay: DELETE /models/{version} removes those."""
    job = _get(jobs, job_id)
    if not job.final:
        raise Conflict(f"job {job_id} is {job.status}; cancel it or wait for it to finish")
    remove_dir(settings.reports_dir / job_id)
    return Response(status_code=204)


@router.get("/{job_id}/events")
def job_events(job_id: str, jobs: JobStoreDep, queue: JobQueueDep) -> StreamingResponse:
    """Server-sent events: `status` and `progress` as they happen, then `end` with the final job."""
    _get(jobs, job_id)

    def stream() -> Iterator[str]:
        after = "0-0"
        while True:
            events = jobs.events(job_id, after, block_ms=1_000)
            if not events:
                yield ": keep-alive\n\n"
            for offset, fields in events:
                after = offset
                if fields.get("type") == "progress":
                    yield f"event: progress\ndata: {fields['data']}\n\n"
                else:
                    yield f"event: status\ndata: {json.dumps({'status': fields.get('status')})}\n\n"
                    if fields.get("status") in FINAL:
                        final = _out(jobs.get(job_id), queue).model_dump_json()
                        yield f"event: end\ndata: {final}\n\n"
                        return

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

"""What each job type does: resolve its inputs, call the library (models/), report to the job store.

Celery tasks (worker/celery_app.py) only call `run_job`; this module has no Celery import, so it can be
tested and reasoned about on its own.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from xling.models.adapters.training import AdapterProgress, train_adapters
from xling.models.centering import Centering
from xling.models.data.bitext import load_bitext
from xling.models.encoder import Encoder, TextKind, encode_in_steps
from xling.models.evaluation.decision import deploy_decision
from xling.models.evaluation.evaluate import EvaluationReport, eval_set, evaluate
from xling.models.evaluation.modes import RetrievalMode
from xling.models.evaluation.reports import write_evaluation_report
from xling.models.experiment import ExperimentSpec, run_experiment
from xling.models.index.fusion import SearchMode
from xling.models.index.vector_index import VectorIndex
from xling.models.manifest import read_manifest, write_manifest
from xling.models.resolve import ModelSource, resolve_model
from xling.models.training.trainer import Progress
from xling.state.centering import (
    calibrate_corpus,
    centering_folder,
    load_centering,
    means_for_build,
)
from xling.state.connections import redis_client
from xling.state.datasets import dataset_path
from xling.state.docstore import Corpus, DocReader
from xling.state.indexing import ServingPair, index_spec, load_encoder
from xling.state.jobs import (
    EvaluateJob,
    ExperimentJob,
    FinetuneJob,
    JobSpec,
    ReindexJob,
    parse_job,
    queue_range_helpers,
)
from xling.state.jobstore import Job, JobNotFound, JobStore
from xling.state.keys import RedisKeys
from xling.state.polling import OUTAGE_ERRORS, OutageNotice
from xling.state.registry import Registry
from xling.state.reindex_ranges import RangeBoard
from xling.state.retention import LogRetention
from xling.state.settings import Settings
from xling.worker.adapter_reindex import AdapterBuild, adapter_parent, build_from_parent
from xling.worker.build_tiers import build_tier
from xling.worker.presence import worker_name
from xling.worker.progress import PACE_FIELDS, Pace
from xling.worker.ranked_finetune import finetune_on_ranks, training_processes
from xling.worker.reindex import merge_ranges, ranges_folder, wait_for_ranges, write_plan
from xling.worker.stopping import STOPPING
from xling.worker.train_ranks import FinetuneRun

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5  # bound on job-store writes from a fast training loop


class Cancelled(Exception):
    pass


class Fenced(Exception):
    """The job is no longer running (the sweep failed it while this worker was stopped or cut off): its worker
    stops, writes nothing more and publishes nothing."""


@dataclass
class JobContext:
    settings: Settings
    store: JobStore
    registry: Registry
    redis: redis.Redis
    keys: RedisKeys
    job: Job
    fenced: threading.Event = field(default_factory=threading.Event)  # set by the heartbeat once it is refused
    position: str = ""  # the last progress reported, but for its pace

    def dataset(self, name: str) -> Path:
        """Jobs read datasets only from DATA_DIR/datasets (names were validated when queued)."""
        path = dataset_path(self.settings.datasets_dir, name)
        if path is None:
            raise ValueError(f"no dataset {name!r}")
        return path

    def model_spec(self, name: str) -> str | None:
        """'active' -> the active registry version (or the configured default); else the name itself."""
        if name == "active":
            return self.registry.active() or self.settings.retrieval_model
        return name

    @staticmethod
    def folder_allowed(name: str) -> bool:
        """Only the operator's configured model may be a folder; a client's name is a version or a hub id."""
        return name == "active"

    def checkpoint(self, where: str) -> None:
        """Before each step that publishes something, and between phases (training stops itself at its next step):
        raises Fenced when the job no longer runs, Cancelled when a client cancelled it. The beat it writes means
        the sweep cannot fail the job for `heartbeat_timeout_s`: the step that follows has that long."""
        if self.fenced.is_set() or not self.store.beat(self.job.id):
            self.fenced.set()
            raise Fenced(f"job no longer running {where}")
        if STOPPING.is_set() or self.store.cancel_requested(self.job.id):
            raise Cancelled(f"cancelled {where}")

    def should_stop(self) -> bool:
        """For loops that poll (training): cancelled, fenced, or the worker told to stop."""
        return STOPPING.is_set() or self.fenced.is_set() or self.store.cancel_requested(self.job.id)

    def report(self, stage: str, **fields: Any) -> None:
        progress = {"stage": stage, **fields}
        # Advanced: anything but the pace changed (a coordinator waiting on others reports the same done again).
        position = json.dumps({k: v for k, v in progress.items() if k not in PACE_FIELDS}, sort_keys=True)
        advanced, self.position = position != self.position, position
        if not self.store.report_progress(self.job.id, progress, advanced):
            self.fenced.set()


@contextmanager
def heartbeat(ctx: JobContext, interval_s: float) -> Iterator[None]:
    """Beat from a thread of its own, whatever the job's work is doing; a refused beat (the job was failed
    meanwhile) fences the job and ends the beats."""
    stop, store, job_id = threading.Event(), ctx.store, ctx.job.id
    outage = OutageNotice(log, f"heartbeat of job {job_id}")

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                running = store.beat(job_id)
            except OUTAGE_ERRORS as exc:
                outage.failed(exc)
                continue
            outage.recovered()
            if not running:
                log.warning("job no longer running (failed by the sweep while this worker was silent): stopping it",
                            extra={"job_id": job_id})
                ctx.fenced.set()
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _throttled_progress(ctx: JobContext) -> Callable[[Progress], None]:
    last = [0.0]

    def report(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or p.step == p.total:
            last[0] = now
            ctx.report(
                "training", step=p.step, total=p.total, loss=p.loss, samples_per_s=round(p.samples_per_s, 1),
                eta_s=round(p.eta_s, 1) if p.eta_s is not None else None,
            )

    return report


def _evaluate_version(
    ctx: JobContext, name: str, datasets: list[str], label: str, centering: bool = False, mode: SearchMode = "dense"
) -> EvaluationReport:
    """`name`: 'active', a registry version or a hub id, as a client gave it. `mode`: the retrieval scored."""
    source = resolve_model(ctx.model_spec(name), ctx.settings.models_dir, allow_folder=ctx.folder_allowed(name))
    ctx.report("evaluating", model=source.version)
    encoder = load_encoder(source, ctx.settings)
    sets = [eval_set(ctx.dataset(d), name=d) for d in datasets]
    retrieval = RetrievalMode(mode, ctx.settings.fusion_config() if mode == "hybrid" else None)
    where: dict[str, Any] = {"model": source.version, "set": "", "texts_encoded": 0}
    last, in_call = [0.0], [0]  # when progress was last written; texts done in the current encode call

    def on_set(label: str) -> None:
        where["set"] = label
        ctx.report("evaluating", **where)

    def encoded(kind: TextKind, done: int, texts: int) -> None:
        """Progress within a set (a large one on a slow machine takes long), and a point to stop at."""
        where["texts_encoded"] += done - in_call[0]
        in_call[0] = 0 if done == texts else done
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S or done == texts:
            last[0] = time.monotonic()
            ctx.checkpoint("while evaluating")
            ctx.report("evaluating", **where)

    report = evaluate(encode_in_steps(encoder.encode, encoder.dim, encoded), source.version, sets, progress=on_set,
                      centering=centering, mode=retrieval)
    write_evaluation_report(report, ctx.settings.reports_dir / ctx.job.id / label)
    return report


def deploy(ctx: JobContext, version: str) -> dict[str, Any]:
    """Hot swap, worker side (DESIGN §8): encode every document with `version` from log offset O, write
    indexes/<version>/ at O, then activate; each api replays the log from O and swaps.

    The index is centred with the version's means, calibrated on the corpus first if it has none
    (state/centering.py)."""
    outcome = _publish_index_of(ctx, version, new_means=False)
    ctx.checkpoint("before activating the version")
    ctx.registry.activate(version)
    log.info("deployed", extra={"version": version, "vectors": outcome["reindexed"],
                                "seconds": outcome["reindex_seconds"]})
    return outcome


def recalibrate(ctx: JobContext, version: str) -> dict[str, Any]:
    """New means for the served `version` from the corpus as it is now, and its index encoded again with them;
    the means are written only once that index is saved (an api that sees them finds their snapshot), and every
    api then swaps to it as to a new model. The active version does not change."""
    return _publish_index_of(ctx, version, new_means=True)


def _publish_index_of(ctx: JobContext, version: str, *, new_means: bool) -> dict[str, Any]:
    """The index of `version` built and published (deploy and recalibrate above; `new_means`: recalibrate);
    returns what it did."""
    source = _served_source(ctx, version) if new_means else resolve_model(version, ctx.settings.models_dir)
    encoder = load_encoder(source, ctx.settings)
    settings = ctx.settings
    tier = build_tier(settings, ctx.redis, ctx.keys)
    if new_means and not tier.reads_documents:
        raise ValueError("recalibrating reads the corpus, which XLING_DOCUMENT_STORE=qdrant keeps in the api's "
                         "Qdrant local-mode folder, where no worker may read it: use a Qdrant server")
    started = time.monotonic()
    with ExitStack() as scope:
        corpus = tier.corpus(scope)
        # Keep the log from O on while encoding, and for a grace period after activation: every api replays
        # from O when it swaps (xling.state.retention). The range plan reads O after this, so O is at least this
        # new.
        retention, holder, grace = LogRetention(ctx.redis, ctx.keys), f"reindex:{ctx.job.id}", settings.log_swap_grace_s
        pinned = corpus.start_offset()
        retention.hold(holder, pinned, grace)
        retention.check(pinned)

        encoding = Pace()

        def progress(done: int, total: int) -> None:
            retention.hold(holder, pinned, grace)
            ctx.report("reindexing", **encoding.fields(done, total), worker=worker_name())

        paces: dict[str, Pace] = {}

        def calibrating(step: str, done: int, total: int) -> None:
            ctx.checkpoint("while calibrating")
            retention.hold(holder, pinned, grace)
            ctx.report("calibrating", step=step, **paces.setdefault(step, Pace()).fields(done, total))

        reuse = tier.reuses_parent_index and not new_means
        delta = _adapter_delta(ctx, corpus, source, encoder, progress) if reuse else None
        if delta is not None:
            centering = delta.pair.centering
        elif new_means:
            ctx.report("calibrating", step="sampling")
            centering = calibrate_corpus(corpus, encoder, settings, calibrating) if settings.centering else None
            if centering is None:
                raise ValueError(f"nothing to calibrate on: centring is off, or no language has "
                                 f"{settings.centering_min_docs} documents")
        elif not tier.reads_documents:  # the api calibrates them, where the documents are
            centering = load_centering(settings, source.version)
        else:
            centering = means_for_build(corpus, encoder, settings)
        outcome: dict[str, Any]
        if delta is not None:
            ctx.checkpoint("before publishing the index")
            tier.publish(delta.pair, corpus)
            outcome = dict(delta.outcome)
        elif not tier.builds_here:
            outcome = {"reindexed": 0, "index_built_by": tier.name}
        else:
            pair = build_spread(ctx, corpus, source, encoder, centering, progress)
            retention.hold(holder, pinned, grace)
            ctx.checkpoint("before publishing the index")
            tier.publish(pair, corpus)
            outcome = {"reindexed": len(pair.index), "offset": pair.applied_offset}
    seconds = time.monotonic() - started
    outcome["reindex_seconds"] = round(seconds, 2)
    if centering is not None:
        outcome.update(centering=centering.id, centred_languages=centering.languages)
    if new_means:
        assert centering is not None
        ctx.checkpoint("before publishing the means")
        centering.save(centering_folder(ctx.settings, source.version))  # the apis swap to it now
        log.info("recalibrated", extra={"version": source.version, "centering": centering.id})
    return outcome


def _adapter_delta(
    ctx: JobContext, corpus: Corpus, source: ModelSource, encoder: Encoder, progress: Callable[[int, int], None]
) -> AdapterBuild | None:
    """A version that only added adapters to its parent: its index from the parent's (worker/adapter_reindex.py);
    None otherwise, or when that cannot be done safely."""
    parent = adapter_parent(source)
    if parent is None or not isinstance(corpus, DocReader):
        return None
    ctx.report("reindexing", stage_detail="adapter languages only", parent=parent)
    return build_from_parent(corpus, ctx.settings, source, encoder, _served_source(ctx, parent), progress,
                             LogRetention(ctx.redis, ctx.keys).check)


def build_spread(
    ctx: JobContext, reader: Corpus, source: ModelSource, encoder: Encoder, centering: Centering | None,
    progress: Callable[[int, int], None],
) -> ServingPair:
    """Encode the corpus in ranges that this worker and every other live one take (worker/reindex.py), then
    merge them into the index, at the offset read before the ids were listed."""
    settings, job_id = ctx.settings, ctx.job.id
    folder = ranges_folder(settings, job_id)
    _remove_stale_ranges(ctx, folder.parent)
    plan = write_plan(reader, folder, job_id, source, settings.reindex_ranges, centering)
    board = RangeBoard(ctx.redis, ctx.keys, job_id, plan.ranges, settings.reindex_lease_s)
    board.clear()  # a retried job starts its ranges afresh
    others = len(ctx.store.live_workers(settings.heartbeat_timeout_s)) - 1
    if others > 0 and plan.ranges > 1:
        queue_range_helpers(settings, job_id, min(others, plan.ranges - 1))
    encoding = ServingPair(encoder, VectorIndex(encoder.dim, encoder.version), plan.offset, centering)
    total = sum(plan.sizes)

    def tick(done: int) -> None:
        ctx.checkpoint("while reindexing")
        progress(done, total)

    try:
        wait_for_ranges(reader, board, folder, plan, encoding, worker_name(), tick)
        return merge_ranges(folder, plan, encoding, index_spec(settings))
    finally:
        board.clear()
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_ranges(ctx: JobContext, parent: Path) -> None:
    """Part files of reindexes no longer running (their worker died before cleaning up)."""
    for folder in parent.glob("*") if parent.is_dir() else []:
        try:
            running = ctx.store.get(folder.name).status == "running"
        except JobNotFound:
            running = False
        if not running:
            shutil.rmtree(folder, ignore_errors=True)


def _served_source(ctx: JobContext, version: str) -> ModelSource:
    """`version` as the apis serve it: a registry version, or the configured default (served from its own
    folder, under its own version name)."""
    if ctx.registry.has(version):
        return resolve_model(version, ctx.settings.models_dir)
    default = resolve_model(ctx.settings.retrieval_model, ctx.settings.models_dir)
    if default.version != version:
        raise ValueError(f"no registry version {version!r}, and the configured model is {default.version!r}")
    return default


def _adapter_progress(ctx: JobContext) -> Callable[[AdapterProgress], None]:
    last = [0.0]

    def report(p: AdapterProgress) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or p.step == p.total or p.val_accuracy is not None:
            last[0] = now
            ctx.report(
                "training adapter", lang=p.lang, step=p.step, total=p.total, loss=p.loss,
                val_accuracy=p.val_accuracy, eta_s=round(p.eta_s, 1) if p.eta_s is not None else None,
            )

    return report


def _train_adapters(ctx: JobContext, job: FinetuneJob, out: Path) -> dict[str, Any]:
    """One adapter per language of the job on the base's shared weights; the version = the base plus them."""
    source = resolve_model(ctx.model_spec(job.base), ctx.settings.models_dir, allow_folder=ctx.folder_allowed(job.base))
    pairs = [pair for name in job.dataset for pair in load_bitext(ctx.dataset(name))]
    trained = train_adapters(
        source, pairs, job.adapters, out, job.adapter_config, version=job.version,
        device=ctx.settings.device, progress=_adapter_progress(ctx),
        should_cancel=ctx.should_stop,
    )
    if trained is None:
        raise Cancelled("cancelled while training adapters")
    return {f"adapter:{t.lang}:{key}": getattr(t, key) for t in trained
            for key in ("steps", "best_step", "train_seconds", "val_accuracy")}


def _train_shared(ctx: JobContext, job: FinetuneJob, out: Path) -> dict[str, Any]:
    """The shared weights tuned (hybrid batches and the rest of TrainConfig), on one GPU or on every one."""
    run = FinetuneRun(
        base=ctx.model_spec(job.base), data=[ctx.dataset(name) for name in job.dataset], out=out,
        registry_dir=ctx.settings.models_dir, version=job.version,
        device=None if ctx.settings.device == "auto" else ctx.settings.device, resume=bool(ctx.job.retry_of),
        allow_folder=ctx.folder_allowed(job.base), dataset_names=job.dataset,
    )

    cancelled = ctx.should_stop
    processes = training_processes(ctx.settings)
    if processes > 1:
        result = finetune_on_ranks(ctx.settings.jobs_dir / ctx.job.id, processes, run, job.config,
                                   _throttled_progress(ctx), cancelled)
    else:
        result = run.run(job.config, _throttled_progress(ctx), cancelled)
    if result.cancelled:
        raise Cancelled(f"cancelled at step {result.steps}")
    return {**result.metrics, "train_processes": processes}


def _changes_from_base(ctx: JobContext, job: FinetuneJob, report: EvaluationReport, centred: bool
                       ) -> dict[str, float]:
    """The proof that adapters moved no other language: each LAReQA eval set (none of its languages adapted)
    scored by the base as well; per set, the largest change of any metric, raw or centred (0 by construction)."""
    sets = [ev.name for ev in report.lareqa]
    base = _evaluate_version(ctx, job.base, sets, "base", centering=centred)
    ours, theirs = report.job_metrics(centred), base.job_metrics(centred)
    return {name: max(abs(ours[key] - theirs[key]) for key in ours if key.startswith(f"{name}:")) for name in sets}


def run_finetune(ctx: JobContext, job: FinetuneJob) -> dict[str, Any]:
    version = job.version
    out = ctx.settings.models_dir / version
    metrics = _train_adapters(ctx, job, out) if job.adapters else _train_shared(ctx, job, out)
    outcome: dict[str, Any] = {"metrics": metrics, "model_version": version}
    eval_sets = job.eval_datasets
    ctx.checkpoint("after training")
    # Models are compared as they would be served: centred per language when the service centres.
    centred = ctx.settings.centering
    report = None
    if eval_sets:
        report = _evaluate_version(ctx, version, eval_sets, "candidate", centering=centred)
        if report.lareqa:  # the first LAReQA set's metrics at the top level, as before bitext sets existed
            outcome["metrics"].update({f"eval_{k}": v for k, v in report.lareqa[0].result.metrics.items()})
        outcome["metrics"].update({f"eval:{name}": v for name, v in report.job_metrics(centred).items()})
        manifest = read_manifest(out)
        assert manifest is not None
        manifest.metrics.update({"evaluation": report.to_dict()})
        for lang in job.adapters:
            manifest.adapters[lang]["heldout"] = report.language_accuracy(lang)
        if job.adapters and report.lareqa:
            changes = _changes_from_base(ctx, job, report, centred)
            manifest.metrics["max_change_from_base"] = changes
            outcome["metrics"].update({f"eval:{name}:max_change_from_base": v for name, v in changes.items()})
        write_manifest(out, manifest)
    mode = job.deploy
    decision: dict[str, Any] = {"mode": mode, "deployed": False}
    if mode == "if_better":
        assert report is not None  # if_better needs eval sets (checked when queued)
        active = _evaluate_version(ctx, "active", eval_sets, "active", centering=centred)
        decision.update(deploy_decision(report, active, job.compare_on, job.guards, centred=centred,
                                        max_drop=job.guard_max_drop))
    elif mode == "always":
        decision["deployed"] = True
    if decision["deployed"]:
        ctx.checkpoint("before deploying")
        outcome["metrics"].update(deploy(ctx, version))
    outcome["decision"] = decision
    return outcome


def run_evaluate(ctx: JobContext, job: EvaluateJob) -> dict[str, Any]:
    report = _evaluate_version(ctx, job.model, job.datasets, "report", centering=job.centering, mode=job.mode)
    return {"metrics": report.job_metrics(job.centering), "model_version": report.model_version,
            "retrieval": report.retrieval}


def run_experiment_job(ctx: JobContext, job: ExperimentJob) -> dict[str, Any]:
    base = job.base
    spec = ExperimentSpec(
        train=[ctx.dataset(d) for d in job.train_dataset], evals=[ctx.dataset(d) for d in job.eval_datasets],
        base=ctx.model_spec(base), steps=job.steps, seeds=job.seeds, config=job.config.train_config(),
        keep_models=True,
    )
    out = ctx.settings.reports_dir / ctx.job.id
    ctx.report("experiment", out=str(out))
    record = run_experiment(spec, out, registry_dir=ctx.settings.models_dir, command=f"job {ctx.job.id}",
                            progress=lambda step: ctx.report("experiment", step=step),
                            allow_folder=ctx.folder_allowed(base))
    rows = {row["label"]: row["sets"] for row in record["rows"]}
    return {"metrics": {"rows": rows, "report": str(out / "experiment.md")}}


def run_reindex(ctx: JobContext, job: ReindexJob) -> dict[str, Any]:
    outcome = recalibrate(ctx, job.version) if job.recalibrate else deploy(ctx, job.version)
    return {"metrics": outcome, "model_version": job.version}


def run_spec(ctx: JobContext, job: JobSpec) -> dict[str, Any]:
    """The job's outcome (fields for the job store) from its typed spec."""
    if isinstance(job, FinetuneJob):
        return run_finetune(ctx, job)
    if isinstance(job, EvaluateJob):
        return run_evaluate(ctx, job)
    if isinstance(job, ExperimentJob):
        return run_experiment_job(ctx, job)
    if isinstance(job, ReindexJob):
        return run_reindex(ctx, job)
    raise ValueError(f"no runner for {type(job).__name__}")


def run_job(job_id: str, settings: Settings) -> None:
    """Run one job to a final state; never raises (failures are recorded in the job)."""
    client = redis_client(settings)
    keys = RedisKeys(settings.key_prefix)
    store = JobStore(client, keys)
    store.sweep_lost(settings.heartbeat_timeout_s)  # the next worker notices a predecessor's lost jobs
    if not store.transition(job_id, "running"):
        log.info("job not started: no longer queued", extra={"job_id": job_id})
        return
    ctx = JobContext(settings, store, Registry(client, keys, settings.models_dir), client, keys, store.get(job_id))
    with heartbeat(ctx, settings.heartbeat_interval_s):
        try:
            outcome = run_spec(ctx, parse_job(ctx.job.type, ctx.job.params))
            store.transition(job_id, "succeeded", **outcome)
        except Cancelled as exc:
            if STOPPING.is_set() and not store.cancel_requested(job_id):
                # Not the client's cancel: the worker is shutting down. Failed, so a retry resumes it.
                where = str(exc).replace("cancelled", "it ended", 1)
                store.transition(job_id, "failed", error=f"the worker was stopped while the job ran ({where}); "
                                 "POST /jobs/{id}/retry runs it again (a finetune from its last checkpoint)")
            else:
                store.transition(job_id, "cancelled", error=str(exc))
        except Fenced as exc:
            log.warning("job stopped: %s; its state stays %s", exc, store.get(job_id).status, extra={"job_id": job_id})
        except Exception as exc:
            log.error("job failed", extra={"job_id": job_id, "trace": traceback.format_exc()})
            store.transition(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
    client.close()

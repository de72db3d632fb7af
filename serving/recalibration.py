"""When the served means are stale, get new ones (docs/searching.md, "Centring"), whichever replica asks first:
where the index tier can (its index in this process, or documents in a Qdrant local-mode folder no worker may read),
this api calibrates them itself; else one `reindex` job with recalibration per version at a time."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from xling.models.centering import Centering
from xling.state.centering import centering_folder
from xling.state.indexing import ServingPair
from xling.state.jobs import ReindexJob
from xling.state.jobstore import Job, JobStore
from xling.state.settings import Settings

log = logging.getLogger(__name__)


class Recalibration:
    def __init__(self, settings: Settings, jobs: JobStore, submit: Callable[[ReindexJob], Job],
                 pair: Callable[[], ServingPair], calibrate_here: Callable[[ServingPair], Centering | None] | None,
                 *, quick: bool = False) -> None:
        """`calibrate_here`: how this api calibrates the means itself (the index tier offers it: from the vectors
        its index holds, or where no worker may read the documents); None: a recalibration job does. `quick`:
        new means cost no encoding of the corpus (the tier applies them to the vectors it holds)."""
        self.settings = settings
        self.jobs = jobs
        self.submit = submit
        self.pair = pair
        self.calibrate_here = calibrate_here
        self.quick = quick
        self._here_took_s = 0.0  # how long this api's last calibration took
        self._here_now: dict[str, Any] | None = None  # the calibration this api is running, while it runs

    def interval_s(self) -> int:
        """At most one automatic recalibration per version within this: `centering_requeue_s` where new means
        cost an encode of the corpus (a job, or a new Qdrant collection; a failed one is not retried at once); ten
        times the last one's duration where this api applies them to the vectors it holds (a pass over the
        corpus, not an encode of it), so that languages arriving
        one after another get their means within seconds while calibrating takes at most a tenth of the time."""
        if self.calibrate_here is None or not self.quick:
            return self.settings.centering_requeue_s
        return min(self.settings.centering_requeue_s, max(1, math.ceil(10 * self._here_took_s)))

    def ask(self, version: str, reasons: list[str]) -> None:
        """The swap watcher found `reasons` to recalibrate `version`: calibrate here, or queue a job, unless one
        is under way or ran within `interval_s`."""
        if not self.jobs.claim_recalibration(version, self.interval_s()):
            return
        if self.calibrate_here is not None:
            self._here(version, reasons, self.calibrate_here)
            return
        job = self.submit(ReindexJob(version=version, recalibrate=True))
        self.jobs.record_recalibration(version, job.id)
        log.warning("centring: recalibration queued", extra={"version": version, "job_id": job.id, "reasons": reasons})

    def pending(self, version: str) -> dict[str, Any] | None:
        """The calibration of `version`'s next means under way in this api, or the job that will calibrate them,
        while one is queued or running, and how far it is: what /healthz and /models/active show, so that a user
        waiting for centred search sees it coming."""
        running_here = self._here_now
        if running_here is not None and running_here["version"] == version:
            return {"job_id": None, "status": "running", "progress": {
                "stage": "calibrating in the api", "reasons": running_here["reasons"],
                "elapsed_s": round(time.monotonic() - running_here["started"], 1)}}
        job = self.jobs.pending_recalibration(version)
        if job is None:
            return None
        return {"job_id": job.id, "status": job.status, "progress": job.progress}

    def _here(self, version: str, reasons: list[str], calibrate: Callable[[ServingPair], Centering | None]) -> None:
        """This api calibrates new means itself, and the swap watcher then moves to an index with them."""
        pair = self.pair()
        if pair.version != version:
            return
        started = time.monotonic()
        self._here_now = {"version": version, "reasons": reasons, "started": started}
        try:
            centering = calibrate(pair)
        finally:
            self._here_took_s = time.monotonic() - started
            self._here_now = None
        if centering is not None:
            centering.save(centering_folder(self.settings, version))
            log.warning("centring: recalibrated by the api", extra={
                "version": version, "centering": centering.id, "languages": centering.languages,
                "seconds": round(time.monotonic() - started, 2), "reasons": reasons})

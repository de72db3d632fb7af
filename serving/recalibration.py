"""When the served means are stale, get new ones (README, "Centring"): one `reindex` job with recalibration per
version at a time, whichever replica asks first; with the documents in a Qdrant local-mode folder (where no
worker may read them), this api calibrates the means itself."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from xling.state.centering import calibrate_corpus, centering_folder
from xling.state.docstore import Corpus
from xling.state.indexing import ServingPair
from xling.state.jobs import ReindexJob
from xling.state.jobstore import Job, JobStore
from xling.state.settings import Settings

log = logging.getLogger(__name__)


class Recalibration:
    def __init__(self, settings: Settings, jobs: JobStore, submit: Callable[[ReindexJob], Job],
                 pair: Callable[[], ServingPair], corpus: Callable[[], Corpus], *, here: bool) -> None:
        """`here`: the documents are where no worker may read them (the index tier says so), so this api
        calibrates the means itself."""
        self.settings = settings
        self.here = here
        self.jobs = jobs
        self.submit = submit
        self.pair = pair
        self.corpus = corpus

    def ask(self, version: str, reasons: list[str]) -> None:
        """The swap watcher found `reasons` to recalibrate `version`: queue it unless one is under way or was
        queued within `centering_requeue_s` (a large corpus takes a while; a failed one is not retried at once)."""
        if not self.jobs.claim_recalibration(version, self.settings.centering_requeue_s):
            return
        if self.here:
            self._here(version, reasons)
            return
        job = self.submit(ReindexJob(version=version, recalibrate=True))
        self.jobs.record_recalibration(version, job.id)
        log.warning("centring: recalibration queued", extra={"version": version, "job_id": job.id, "reasons": reasons})

    def pending(self, version: str) -> dict[str, Any] | None:
        """The job that will calibrate `version`'s next means, and how far it is, while one is queued or running:
        what /healthz and /models/active show, so that a user waiting for centred search sees it coming."""
        job = self.jobs.pending_recalibration(version)
        if job is None:
            return None
        return {"job_id": job.id, "status": job.status, "progress": job.progress}

    def _here(self, version: str, reasons: list[str]) -> None:
        """This api calibrates new means itself, and the swap watcher then moves to a collection built with
        them."""
        pair = self.pair()
        if pair.version != version:
            return
        centering = calibrate_corpus(self.corpus(), pair.encoder, self.settings)
        if centering is not None:
            centering.save(centering_folder(self.settings, version))
            log.warning("centring: recalibrated by the api (documents in Qdrant local mode)",
                        extra={"version": version, "centering": centering.id, "reasons": reasons})

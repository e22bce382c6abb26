"""Recovery and clean-up, as a loop: run by every worker on a timer, or by hand.

One pass (:func:`sweep_once`):

1. leases that ran out (their worker died) put their scans and explanations back in the
   queue, or fail a scan that has had ``MAX_ATTEMPTS`` attempts, and ask for a wake-up;
2. wake-ups still in the outbox (a crash or a Redis error after a commit) are sent;
3. when scans are waiting and ``idle`` says no one is on them, one more wake-up is sent
   (a wake-up lost with a Redis restart costs at most one sweep interval);
4. open jobs that no part has reached within ``OPEN_JOB_TIMEOUT`` (a C-STORE job: whose
   series had no new instance for ``SERIES_STABLE_SECONDS``) are sealed (deleted, when
   they hold no scan);
5. jobs that have ended without their webhook events (two workers wrote their last scans
   at once, or leases expired into failures) get them, and events whose delivery is due
   and that no queue holds are sent to the queue (:mod:`core.webhooks`);
6. jobs past their ``expires_at`` are deleted, blobs, thumbnails and webhook deliveries
   included, and so are the blobs of job ids that have no job row (a crash mid-upload, a
   two-step upload never started) once ``orphan_grace`` has passed; so are retrievals
   (their sealed accession numbers) asked for more than ``JOB_RETENTION`` ago.

``covidscan sweep --once`` runs one pass; ``covidscan sweep`` (a service of its own in the
deployed stack and in ``make run``) runs it every ``SWEEP_INTERVAL`` seconds, and so does
every worker for steps 1–5.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.jobs.ending import commit_ending
from core.metrics import count_recovered
from core.webhooks import SendDeliveries, relay_events
from covidscan.settings import Settings
from db.blobs import BlobStore
from db.explanations import expire_explanation_leases, waiting_explanations
from db.exports import delete_job_exports
from db.jobs import (
    delete_job_rows,
    existing_job_ids,
    expired_job_ids,
    job_scan_count,
    lapsed_open_job_ids,
    seal_job,
)
from db.keys import delete_expired_sessions
from db.models import Job, Scan, ScanStatus, utcnow
from db.outbox import SendWakeups, add_wakeups, relay
from db.retrievals import delete_expired_retrievals
from db.scans import expire_leases
from db.session import in_transaction
from db.webhooks import delete_job_webhooks

log = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = 6 * 3600
"""Blobs without a job row are kept this long: an upload writes its blobs before
its row commits, and the largest upload must not lose its files while it is stored."""


@dataclass(frozen=True)
class SweepReport:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    wakeups_sent: int = 0
    jobs_deleted: int = 0
    orphans_deleted: int = 0
    events_made: int = 0
    events_queued: int = 0
    jobs_sealed: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())


def waiting_scans(session: Session) -> int:
    return session.scalar(select(func.count()).where(Scan.status == ScanStatus.QUEUED)) or 0


def delete_job(session_factory: sessionmaker[Session], blobs: BlobStore, job_id: str) -> None:
    """Delete a job's rows, then its blobs and thumbnails (they share the job's key prefix)."""

    def rows(session: Session) -> None:
        delete_job_webhooks(session, job_id)
        delete_job_exports(session, job_id)
        delete_job_rows(session, job_id)

    in_transaction(session_factory, rows)
    blobs.delete_job(job_id)


def delete_expired(session_factory: sessionmaker[Session], blobs: BlobStore) -> int:
    deleted = 0
    while True:
        with session_factory() as session:
            ids = expired_job_ids(session)
        for job_id in ids:
            delete_job(session_factory, blobs, job_id)
            log.info("job %s expired and was deleted", job_id)
        deleted += len(ids)
        if len(ids) < 100:
            return deleted


def seal_lapsed_jobs(
    session_factory: sessionmaker[Session], blobs: BlobStore, clean_up: bool
) -> int:
    """Seal the open jobs no part has reached within OPEN_JOB_TIMEOUT: their scans are
    kept and the jobs end when those do. A lapsed job that holds no scan is deleted (by a
    pass that cleans up: only it may delete blobs, such as a refused part's leftovers)."""
    sealed = 0
    with session_factory() as session:
        ids = lapsed_open_job_ids(session)
    for job_id in ids:
        with session_factory.begin() as session:
            job = session.scalars(
                select(Job).where(Job.id == job_id, Job.open_until < utcnow()).with_for_update()
            ).first()
            if job is None:
                continue  # sealed, deleted or sent a part meanwhile
            empty = job_scan_count(session, job_id) == 0
            if not empty:
                seal_job(job)
                sealed += 1
                log.info(
                    "job %s: open time over (no part within OPEN_JOB_TIMEOUT, or a C-STORE "
                    "job's series stable for SERIES_STABLE_SECONDS); sealed",
                    job_id,
                )
        if empty and clean_up:
            delete_job(session_factory, blobs, job_id)
            log.info("job %s: open with no scans past OPEN_JOB_TIMEOUT; deleted", job_id)
    return sealed


def delete_orphan_blobs(
    session_factory: sessionmaker[Session], blobs: BlobStore, grace_seconds: float
) -> int:
    candidates = blobs.job_ids_older_than(grace_seconds)
    if not candidates:
        return 0
    with session_factory() as session:
        known = existing_job_ids(session, candidates)
    orphans = [job_id for job_id in candidates if job_id not in known]
    for job_id in orphans:
        blobs.delete_job(job_id)
        log.info("deleted blobs of %s: no job has them", job_id)
    return len(orphans)


def sweep_once(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    send: SendWakeups,
    settings: Settings,
    idle: bool = True,
    clean_up: bool = True,
    orphan_grace: float = ORPHAN_GRACE_SECONDS,
    send_deliveries: Optional[SendDeliveries] = None,
) -> SweepReport:
    """One pass of recovery and, with ``clean_up``, of retention (see the module's docstring).

    Workers recover only (they mount the blob store read-only); ``covidscan sweep`` does both.
    """
    with session_factory.begin() as session:
        expired = expire_leases(session, settings.max_attempts)
        explanations = expire_explanation_leases(session, settings.max_attempts)
        if expired.requeued or explanations:
            add_wakeups(
                session,
                1 + (expired.requeued + explanations) // settings.batch_size,
                "expired leases",
            )
        elif idle and (waiting_scans(session) or waiting_explanations(session)):
            add_wakeups(session, 1, "work waiting")
    count_recovered(expired.requeued, expired.failed, expired.cancelled)
    sent = relay(session_factory, send)
    sealed = seal_lapsed_jobs(session_factory, blobs, clean_up)
    with session_factory() as session:  # ended by this pass, or missed by no one
        finished = commit_ending(session, None, session_factory, None)
    events_made = len(finished.event_ids)
    events_queued = relay_events(session_factory, send_deliveries) if send_deliveries else 0
    jobs_deleted = orphans = 0
    if clean_up:
        jobs_deleted = delete_expired(session_factory, blobs)
        orphans = delete_orphan_blobs(session_factory, blobs, orphan_grace)
        with session_factory.begin() as session:
            delete_expired_sessions(session)
            delete_expired_retrievals(session, settings.job_retention)
    report = SweepReport(
        expired.requeued,
        expired.failed,
        expired.cancelled,
        sent,
        jobs_deleted,
        orphans,
        events_made,
        events_queued,
        sealed,
    )
    if expired.requeued or expired.failed or expired.cancelled:
        log.warning(
            "expired leases: %d scans back in the queue, %d failed after %d attempts, %d cancelled",
            expired.requeued,
            expired.failed,
            settings.max_attempts,
            expired.cancelled,
        )
    return report


class SweepLoop:
    """Runs a pass every ``interval`` seconds in a daemon thread until stopped.

    An error in a pass (the database or Redis away) is logged; the next pass tries again.
    """

    def __init__(
        self, run_pass: Callable[[], object], interval: float, name: str = "sweep"
    ) -> None:
        self.run_pass = run_pass
        self.interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.name = name

    def start(self) -> SweepLoop:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def run(self, after_pass: Callable[[], None] = lambda: None) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_pass()
            except Exception:
                log.exception("%s: pass failed; next in %s s", self.name, self.interval)
            else:
                after_pass()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

"""Data functions for jobs: create, read status, page through results.

Every function takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from covidscan.contract import JobStatus
from db.identity import ModelIdentity
from db.models import PRIORITIES, Explanation, Job, Model, Scan, ScanStatus, utcnow
from db.outbox import add_wakeups
from db.session import rows_changed


@dataclass(frozen=True)
class NewScan:
    filename: str
    blob_key: str
    size_bytes: int
    # A DICOM slice's :class:`db.models.Scan` columns (frame, UIDs, position); empty otherwise.
    dicom: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobCounts:
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    def status(self, cancel_requested: bool = False, is_open: bool = False) -> JobStatus:
        """Job status derived from scan counts, whether a cancel was asked for and whether
        the job still takes scans (``open``: it cannot have ended)."""
        done = self.succeeded + self.failed
        if cancel_requested:
            return JobStatus.CANCELLING if self.queued + self.running else JobStatus.CANCELLED
        if is_open:
            return JobStatus.OPEN
        if self.total == 0 or self.queued == self.total:
            return JobStatus.QUEUED
        if done < self.total:
            return JobStatus.RUNNING
        if self.failed == 0:
            return JobStatus.SUCCEEDED
        if self.succeeded == 0:
            return JobStatus.FAILED
        return JobStatus.PARTIALLY_SUCCEEDED

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "queued": self.queued,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }


@dataclass(frozen=True)
class JobSummary:
    job: Job
    counts: JobCounts
    started_at: Optional[datetime]
    finished_at: Optional[datetime]

    @property
    def status(self) -> JobStatus:
        return self.counts.status(
            self.job.cancelled_at is not None, self.job.open_until is not None
        )

    @property
    def priority(self) -> str:
        return PRIORITIES[self.job.priority]


FINISHED_STATUSES = JobStatus.finished()


@dataclass(frozen=True)
class JobOptions:
    """What a submission may ask for besides its scans."""

    name: Optional[str] = None
    owner: Optional[str] = None  # the owner of the key that submitted it
    requested_model: Optional[str] = None
    model: Optional[Model] = None
    priority: int = 1
    precision: Optional[str] = None
    callback_url: Optional[str] = None  # gets a signed event when the job ends
    retention_seconds: int = 0
    chunk_size: int = 32
    explain: Optional[str] = None  # "gradcam": explain every scan once it has a result
    series_rule: Optional[str] = None  # recorded when the job holds DICOM slices
    intended_use: Optional[dict[str, Any]] = None  # the rules in force at submission
    # > 0: the job stays open for more scans (POST /v1/jobs/<id>/scans) until it is sealed,
    # or until this many seconds pass without a new part.
    open_seconds: int = 0
    export_to: Sequence[str] = ()  # registered destinations its series' results go to


def create_job(
    session: Session, scans: Sequence[NewScan], job_id: str, options: JobOptions = JobOptions()
) -> Job:
    """Add a job, its scans in upload order and its wake-ups to the session (not committed).

    ``options.model`` pins the job to a registered model; None means the untrained
    default. One wake-up per ``chunk_size`` scans goes into the outbox, so the job's
    scans are spread over the workers that are free.
    """
    model = options.model
    now = utcnow()
    job = Job(
        id=job_id,
        name=options.name,
        requested_model=options.requested_model,
        owner=options.owner,
        priority=options.priority,
        precision=options.precision,
        callback_url=options.callback_url,
        created_at=now,
        explain=options.explain,
        series_rule=options.series_rule,
        intended_use=options.intended_use,
        export_to=list(options.export_to) or None,
        expires_at=(
            now + timedelta(seconds=options.retention_seconds)
            if options.retention_seconds
            else None
        ),
        open_until=(
            now + timedelta(seconds=options.open_seconds) if options.open_seconds else None
        ),
    )
    if model is not None:
        job.model_id = model.id
        for column, value in ModelIdentity.of_registered(model).job_columns().items():
            setattr(job, column, value)
    job.scans = [
        Scan(
            position=i,
            filename=s.filename,
            blob_key=s.blob_key,
            size_bytes=s.size_bytes,
            status=ScanStatus.QUEUED,
            priority=options.priority,
            queued_at=now,
            **s.dicom,
        )
        for i, s in enumerate(scans)
    ]
    session.add(job)
    add_wakeups(session, math.ceil(len(scans) / options.chunk_size), f"job {job_id}")
    return job


def next_position(session: Session, job_id: str) -> int:
    """The upload position the job's next scan gets (0 for an empty job)."""
    last = session.scalar(select(func.max(Scan.position)).where(Scan.job_id == job_id))
    return 0 if last is None else last + 1


def job_scan_count(session: Session, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Scan).where(Scan.job_id == job_id)) or 0


def append_scans(
    session: Session,
    job: Job,
    scans: Sequence[NewScan],
    chunk_size: int,
    series_rule: Optional[str] = None,
) -> list[Scan]:
    """Add scans after the job's last one, with their wake-ups (not committed); the rows.

    A job that had finished runs again for them; its series rule, once recorded, stays.
    The job's row is held from here to the commit, so that appends sent at once get their
    positions one after the other.
    """
    _lock_job(session, job.id)
    start = next_position(session, job.id)
    now = utcnow()
    rows = [
        Scan(
            job_id=job.id,
            position=start + i,
            filename=s.filename,
            blob_key=s.blob_key,
            size_bytes=s.size_bytes,
            status=ScanStatus.QUEUED,
            priority=job.priority,
            queued_at=now,
            **s.dicom,
        )
        for i, s in enumerate(scans)
    ]
    session.add_all(rows)
    if job.series_rule is None:
        job.series_rule = series_rule
    add_wakeups(session, math.ceil(len(scans) / chunk_size), f"job {job.id}")
    return rows


def _lock_job(session: Session, job_id: str) -> None:
    """Hold the job's row until commit (a row lock on PostgreSQL, the write lock on SQLite),
    so that transactions appending scans to it get their positions one after the other."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(priority=Job.priority)
        .execution_options(synchronize_session=False)
    )


def take_part(session: Session, job_id: str, open_seconds: int) -> bool:
    """Begin adding a part to an open job: extend its deadline and hold its row until
    commit (as :func:`append_scans` does), so that the job's scan count read next is the
    one the part is added to. False when the job is not open (sealed, cancelled or gone);
    then nothing was changed.
    """
    moved = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.open_until.is_not(None), Job.cancelled_at.is_(None))
        .values(open_until=utcnow() + timedelta(seconds=open_seconds))
        .execution_options(synchronize_session=False),
    )
    return moved == 1


def keep_open_until(session: Session, job_id: str, until: datetime) -> bool:
    """Move an open job's deadline to ``until`` (after which the sweep seals it); False
    when the job is not open (sealed, cancelled or gone). Not committed."""
    moved = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.open_until.is_not(None), Job.cancelled_at.is_(None))
        .values(open_until=until)
        .execution_options(synchronize_session=False),
    )
    return moved == 1


def seal_job(job: Job) -> None:
    """Take no more scans; the job ends once its scans do (not committed)."""
    job.open_until = None


def lapsed_open_job_ids(session: Session, limit: int = 100) -> list[str]:
    """Open jobs whose last part is older than their open time allows."""
    return list(
        session.scalars(
            select(Job.id).where(Job.open_until < utcnow()).order_by(Job.open_until).limit(limit)
        )
    )


def cancel_job(session: Session, job: Job) -> int:
    """Cancel a job's waiting scans at once; running ones finish and keep their result.

    Idempotent; a sealed job with nothing left to do is not marked cancelled, an open one is
    (and takes no more parts). Returns the number of scans cancelled now.
    """
    if job.cancelled_at is None:
        unfinished = session.scalar(
            select(func.count()).where(
                Scan.job_id == job.id, Scan.status.not_in(ScanStatus.terminal())
            )
        )
        if not unfinished and job.open_until is None:
            return 0
        job.cancelled_at = utcnow()
    seal_job(job)  # an open job takes no more parts
    session.execute(
        update(Explanation)
        .where(Explanation.job_id == job.id, Explanation.status == ScanStatus.QUEUED)
        .values(status=ScanStatus.CANCELLED, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rows_changed(
        session,
        update(Scan)
        .where(Scan.job_id == job.id, Scan.status == ScanStatus.QUEUED)
        .values(status=ScanStatus.CANCELLED, finished_at=utcnow())
        .execution_options(synchronize_session=False),
    )


def delete_job_rows(session: Session, job_id: str) -> None:
    """Delete a job, its scans and their explanations (blobs are the caller's to delete).

    The scans are locked first in upload order, the order in which a worker writes a
    batch's results, so this and a worker finishing some of the job's scans queue behind
    one another rather than deadlock.
    """
    session.execute(
        select(Scan.id).where(Scan.job_id == job_id).order_by(Scan.position).with_for_update()
    ).all()
    session.execute(delete(Explanation).where(Explanation.job_id == job_id))
    session.execute(delete(Scan).where(Scan.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))


def expired_job_ids(session: Session, limit: int = 100) -> list[str]:
    """Jobs whose retention has run out."""
    return list(
        session.scalars(
            select(Job.id).where(Job.expires_at < utcnow()).order_by(Job.expires_at).limit(limit)
        )
    )


def existing_job_ids(session: Session, job_ids: Sequence[str]) -> set[str]:
    return set(session.scalars(select(Job.id).where(Job.id.in_(list(job_ids)))))


def summarise_jobs(session: Session, jobs: Sequence[Job]) -> list[JobSummary]:
    """Counts and derived times of several jobs, in two queries whatever their number."""
    ids = [job.id for job in jobs]
    by_job: dict[str, dict[str, int]] = {job_id: {} for job_id in ids}
    for job_id, status, count in session.execute(
        select(Scan.job_id, Scan.status, func.count())
        .where(Scan.job_id.in_(ids))
        .group_by(Scan.job_id, Scan.status)
    ):
        by_job[job_id][ScanStatus(status).value] = count
    times = {
        job_id: (started, last)
        for job_id, started, last in session.execute(
            select(Scan.job_id, func.min(Scan.started_at), func.max(Scan.finished_at))
            .where(Scan.job_id.in_(ids))
            .group_by(Scan.job_id)
        )
    }
    summaries = []
    for job in jobs:
        counts = JobCounts(total=sum(by_job[job.id].values()), **by_job[job.id])
        started, last = times.get(job.id, (None, None))
        summary = JobSummary(job=job, counts=counts, started_at=started, finished_at=None)
        if summary.status in FINISHED_STATUSES:
            summary = replace(summary, finished_at=last)
        summaries.append(summary)
    return summaries


def summarise_job(session: Session, job_id: str) -> Optional[JobSummary]:
    """Return the job with its counts and derived times, or None when it does not exist."""
    job = session.get(Job, job_id)
    return None if job is None else summarise_jobs(session, [job])[0]


ANY_OWNER = object()
"""Pass as ``owner`` to read every owner's jobs (administrators)."""


def _owned(query, owner: object):
    return query if owner is ANY_OWNER else query.where(Job.owner == owner)


def find_job(session: Session, job_id: str, owner: object) -> Optional[Job]:
    """The job ``job_id`` if ``owner`` owns it (or ``owner`` is :data:`ANY_OWNER`), else None:
    another owner's job and a missing one look the same."""
    return session.scalars(_owned(select(Job).where(Job.id == job_id), owner)).first()


def recent_job_summaries(session: Session, limit: int, owner: object) -> list[JobSummary]:
    """The newest jobs of ``owner`` (:data:`ANY_OWNER`: everyone's) first, with their counts."""
    jobs = list(
        session.scalars(_owned(select(Job), owner).order_by(Job.created_at.desc()).limit(limit))
    )
    return summarise_jobs(session, jobs)


def lock_owner(session: Session, owner: str) -> None:
    """Serialise the transactions that add jobs for ``owner`` until this one ends.

    PostgreSQL takes a transaction-scoped advisory lock on the owner; SQLite needs none,
    as its writers already take turns (the count after the job's insert sees every
    committed job and no one else's uncommitted one).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": owner})


def active_job_count(session: Session, owner: str) -> int:
    """How many of ``owner``'s jobs still have scans queued or running."""
    return (
        session.scalar(
            select(func.count(func.distinct(Scan.job_id)))
            .join(Job, Job.id == Scan.job_id)
            .where(Job.owner == owner, Scan.status.in_([ScanStatus.QUEUED, ScanStatus.RUNNING]))
        )
        or 0
    )


def results_page(
    session: Session, job_id: str, limit: int, after_position: int = -1
) -> tuple[list[Scan], Optional[int]]:
    """Scans of a job in upload order after ``after_position``.

    Returns:
        The page and the position to pass as the next cursor, or None on the last page.
    """
    scans = list(
        session.scalars(
            select(Scan)
            .where(Scan.job_id == job_id, Scan.position > after_position)
            .order_by(Scan.position)
            .limit(limit + 1)
        )
    )
    if len(scans) > limit:
        return scans[:limit], scans[limit - 1].position
    return scans, None


def iter_results(session: Session, job_id: str, page_size: int = 500) -> Iterator[Scan]:
    """All scans of a job in upload order, fetched a page at a time."""
    cursor = -1
    while True:
        page, next_cursor = results_page(session, job_id, page_size, cursor)
        yield from page
        if next_cursor is None:
            return
        cursor = next_cursor


def job_pins(
    session: Session, job_ids: Iterable[str]
) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """Each job's pinned model id (None: the untrained default) and requested precision."""
    rows = session.execute(
        select(Job.id, Job.model_id, Job.precision).where(Job.id.in_(list(job_ids)))
    )
    return {job_id: (model_id, precision) for job_id, model_id, precision in rows}

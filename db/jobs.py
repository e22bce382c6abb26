"""Data functions for jobs: create, read status, page through results.

Every function takes a ``session``; the caller owns the transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Optional, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, Model, Scan, ScanStatus


@dataclass(frozen=True)
class NewScan:
    filename: str
    blob_key: str
    size_bytes: int


@dataclass(frozen=True)
class JobCounts:
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def status(self) -> str:
        """Job status derived from scan counts."""
        done = self.succeeded + self.failed
        if self.total == 0 or self.queued == self.total:
            return "queued"
        if done < self.total:
            return "running"
        if self.failed == 0:
            return "succeeded"
        if self.succeeded == 0:
            return "failed"
        return "partially_succeeded"

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "queued": self.queued, "running": self.running,
                "succeeded": self.succeeded, "failed": self.failed}


@dataclass(frozen=True)
class JobSummary:
    job: Job
    counts: JobCounts
    started_at: Optional[datetime]
    finished_at: Optional[datetime]

    @property
    def status(self) -> str:
        return self.counts.status


def create_job(session: Session, name: Optional[str], scans: Sequence[NewScan],
               job_id: str, requested_model: Optional[str] = None,
               model: Optional[Model] = None, owner: Optional[str] = None) -> Job:
    """Add a job and its scans, in upload order, to the session (not committed).

    ``model`` pins the job to a registered model; None means the untrained default.
    ``owner`` is the owner of the key that submitted it.
    """
    job = Job(id=job_id, name=name, requested_model=requested_model, owner=owner)
    if model is not None:
        job.model_id = model.id
        job.model_name, job.model_version = model.name, model.version
        job.model_sha256, job.model_trained = model.sha256, model.trained
    job.scans = [
        Scan(position=i, filename=s.filename, blob_key=s.blob_key, size_bytes=s.size_bytes,
             status=ScanStatus.QUEUED)
        for i, s in enumerate(scans)
    ]
    session.add(job)
    return job


def summarise_jobs(session: Session, jobs: Sequence[Job]) -> list[JobSummary]:
    """Counts and derived times of several jobs, in two queries whatever their number."""
    ids = [job.id for job in jobs]
    by_job: dict[str, dict[str, int]] = {job_id: {} for job_id in ids}
    for job_id, status, count in session.execute(
        select(Scan.job_id, Scan.status, func.count()).where(Scan.job_id.in_(ids))
        .group_by(Scan.job_id, Scan.status)
    ):
        by_job[job_id][ScanStatus(status).value] = count
    times = {job_id: (started, last) for job_id, started, last in session.execute(
        select(Scan.job_id, func.min(Scan.started_at), func.max(Scan.finished_at))
        .where(Scan.job_id.in_(ids)).group_by(Scan.job_id)
    )}
    summaries = []
    for job in jobs:
        counts = JobCounts(total=sum(by_job[job.id].values()), **by_job[job.id])
        started, last = times.get(job.id, (None, None))
        finished = last if counts.status not in ("queued", "running") else None
        summaries.append(JobSummary(job=job, counts=counts, started_at=started,
                                    finished_at=finished))
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
    jobs = list(session.scalars(_owned(select(Job), owner).order_by(Job.created_at.desc())
                                .limit(limit)))
    return summarise_jobs(session, jobs)


def active_job_count(session: Session, owner: str) -> int:
    """How many of ``owner``'s jobs still have scans queued or running."""
    return session.scalar(
        select(func.count(func.distinct(Scan.job_id))).join(Job, Job.id == Scan.job_id)
        .where(Job.owner == owner,
               Scan.status.in_([ScanStatus.QUEUED, ScanStatus.RUNNING]))) or 0


def results_page(session: Session, job_id: str, limit: int,
                 after_position: int = -1) -> tuple[list[Scan], Optional[int]]:
    """Scans of a job in upload order after ``after_position``.

    Returns:
        The page and the position to pass as the next cursor, or None on the last page.
    """
    scans = list(session.scalars(
        select(Scan).where(Scan.job_id == job_id, Scan.position > after_position)
        .order_by(Scan.position).limit(limit + 1)
    ))
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

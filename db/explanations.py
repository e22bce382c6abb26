"""The explanation queue in SQL: asked for, leased by a worker once the scan has a result.

The same lease queue as the scans' (:mod:`db.queue`): a worker claims waiting
explanations (highest priority first) under a lease renewed by its heartbeat, writes each
result only while it holds that lease, and an expired lease puts the explanation back (or
fails it after ``max_attempts``, or cancels it when its job was cancelled). An explanation
waits until its scan has a result; a scan that failed or was cancelled fails its
explanation with the reason. Every function takes a ``session``; the caller owns the
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy import Row, exists, func, select, update
from sqlalchemy.orm import Session

from db.identity import ModelIdentity
from db.models import Explanation, Job, Scan, ScanStatus, utcnow
from db.outbox import add_wakeups
from db.queue import LeaseQueue
from db.session import rows_changed

GRADCAM = "gradcam"
METHODS = (GRADCAM,)


@dataclass(frozen=True)
class ExplanationLease:
    """One claimed explanation: what a worker needs to compute and write it."""

    explanation_id: str
    scan_id: str
    job_id: str
    blob_key: str
    attempt: int
    frame: Optional[int] = None  # of a multi-frame DICOM file


@dataclass(frozen=True)
class ExplanationOutcome:
    """A computed explanation (what it records and its pictures), or the reason there is none."""

    explanation_id: str
    error: Optional[str] = None
    details: Optional[dict[str, Any]] = None  # layer, class_name, class_index, score, …
    pictures: Optional[dict[str, bytes]] = None  # overlay_png, heatmap_png, slice_png, map_npy

    def __post_init__(self) -> None:
        if (self.error is None) == (self.pictures is None):
            raise ValueError("an explanation outcome carries either pictures or an error")


def queue_job_explanations(
    session: Session, job: Job, method: str = GRADCAM, scans: Optional[Sequence[Scan]] = None
) -> int:
    """Queue an explanation of every scan of a new job, or of the ``scans`` just added to
    it (flushed, not committed)."""
    session.flush()
    scans = job.scans if scans is None else scans
    for scan in scans:
        session.add(
            Explanation(
                scan_id=scan.id,
                job_id=job.id,
                method=method,
                status=ScanStatus.QUEUED,
                priority=job.priority,
                queued_at=utcnow(),
                attempts=0,
            )
        )
    return len(scans)


def request_explanation(
    session: Session, scan: Scan, priority: int, method: str = GRADCAM
) -> tuple[Explanation, bool]:
    """The scan's explanation, queued now unless one is waiting, running or done.

    A failed or cancelled one is queued again. Returns it and whether it was (re)queued;
    a queued one gets a wake-up in the same transaction.
    """
    found = session.scalars(
        select(Explanation).where(Explanation.scan_id == scan.id, Explanation.method == method)
    ).first()
    if found is not None and found.status not in (ScanStatus.FAILED, ScanStatus.CANCELLED):
        return found, False
    if found is None:
        found = Explanation(scan_id=scan.id, job_id=scan.job_id, method=method)
        session.add(found)
    found.status, found.error, found.priority = ScanStatus.QUEUED, None, priority
    found.queued_at, found.attempts, found.finished_at = utcnow(), 0, None
    add_wakeups(session, 1, f"explanation of scan {scan.id}")
    return found, True


def find_explanation(
    session: Session, scan_id: str, method: str = GRADCAM
) -> Optional[Explanation]:
    return session.scalars(
        select(Explanation).where(Explanation.scan_id == scan_id, Explanation.method == method)
    ).first()


def explained_scan_ids(session: Session, scan_ids: Sequence[str]) -> dict[str, str]:
    """Each of these scans' explanation status (scans without one are left out)."""
    rows = session.execute(
        select(Explanation.scan_id, Explanation.status).where(
            Explanation.scan_id.in_(list(scan_ids))
        )
    )
    return {scan_id: ScanStatus(status).value for scan_id, status in rows}


def _fail_unexplainable(session: Session) -> int:
    """Explanations of scans that failed or were cancelled fail with the scan's reason."""
    no_result = select(Scan.id).where(Scan.status.in_([ScanStatus.FAILED, ScanStatus.CANCELLED]))
    return rows_changed(
        session,
        update(Explanation)
        .where(Explanation.status == ScanStatus.QUEUED, Explanation.scan_id.in_(no_result))
        .values(
            status=ScanStatus.FAILED,
            finished_at=utcnow(),
            error="the scan has no result to explain (it failed or was cancelled)",
        )
        .execution_options(synchronize_session=False),
    )


def _leases(session: Session, rows: Sequence[Row[Any]]) -> list[ExplanationLease]:
    """Claimed explanations with their scans' blobs, in job and upload order."""
    attempts = {row.id: row.attempts for row in rows}
    found = session.execute(
        select(Explanation.id, Scan.id, Scan.job_id, Scan.blob_key, Scan.frame)
        .join(Scan, Scan.id == Explanation.scan_id)
        .where(Explanation.id.in_(list(attempts)))
        .order_by(Scan.job_id, Scan.position)
    )
    return [
        ExplanationLease(e_id, scan_id, job_id, key, attempts[e_id], frame)
        for e_id, scan_id, job_id, key, frame in found
    ]


EXPLANATIONS: LeaseQueue[ExplanationLease] = LeaseQueue(
    Explanation,
    leases=_leases,
    claimable=lambda now: exists().where(
        Scan.id == Explanation.scan_id, Scan.status == ScanStatus.SUCCEEDED
    ),
    died="worker died while computing this explanation",
)
"""Waiting explanations whose scans have a result, by priority, then queue time."""


def claim_explanations(
    session: Session, owner: str, limit: int, lease_seconds: float
) -> list[ExplanationLease]:
    """Lease up to ``limit`` waiting explanations whose scans have a result."""
    _fail_unexplainable(session)
    return EXPLANATIONS.claim(session, owner, limit, lease_seconds)


def waiting_explanations(session: Session) -> int:
    """Explanations a worker could take now (their scans have a result)."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Explanation)
            .join(Scan, Scan.id == Explanation.scan_id)
            .where(Explanation.status == ScanStatus.QUEUED, Scan.status.in_(ScanStatus.terminal()))
        )
        or 0
    )


def renew_explanation_leases(session: Session, owner: str, lease_seconds: float) -> int:
    return EXPLANATIONS.renew(session, owner, lease_seconds)


def release_explanation_leases(
    session: Session, owner: str, ids: Optional[Sequence[str]] = None
) -> int:
    """Give leases back at once (a worker stopping); the attempt is not counted."""
    return EXPLANATIONS.release(session, owner, ids)


def expire_explanation_leases(session: Session, max_attempts: int) -> int:
    """Explanations whose worker died: back in the queue, or failed after ``max_attempts``
    (cancelled when their job was). Returns how many went back to the queue.
    """
    return EXPLANATIONS.expire(session, max_attempts).requeued


def record_explanations(
    session: Session,
    outcomes: Sequence[ExplanationOutcome],
    leases: Sequence[ExplanationLease],
    model: ModelIdentity,
    owner: str,
) -> int:
    """Write each outcome if ``owner`` still holds its lease; returns rows written."""
    if len(outcomes) != len(leases):
        raise ValueError(f"{len(outcomes)} outcomes for {len(leases)} leases")
    now = utcnow()
    written = 0
    for outcome, lease in zip(outcomes, leases):
        if outcome.explanation_id != lease.explanation_id:
            raise ValueError(
                f"outcome of {outcome.explanation_id} paired with the lease of "
                f"{lease.explanation_id}"
            )
        values = dict(outcome.details or {}, **(outcome.pictures or {}))
        written += EXPLANATIONS.finish(
            session,
            owner,
            lease.explanation_id,
            lease.attempt,
            dict(
                status=ScanStatus.FAILED if outcome.error else ScanStatus.SUCCEEDED,
                error=outcome.error,
                finished_at=now,
                **model.explanation_columns(),
                **values,
            ),
        )
    return written

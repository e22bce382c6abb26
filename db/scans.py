"""The scan queue in SQL: workers lease scans, renew the lease, record results once.

The lease protocol is :mod:`db.queue`'s (:data:`SCANS`). A worker claims the next waiting
scans by priority and marks them ``running`` under a lease (its owner id and an expiry),
renewed by a heartbeat while it works. A result is written only by the holder of the
current lease, so a redelivered or duplicated task, or a worker whose lease expired and was
taken over, changes nothing. Leases of dead workers expire; :func:`expire_leases` puts
their scans back, or fails a scan that has used all its attempts. Every function takes a
``session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Row, String, cast, func, literal, select
from sqlalchemy.orm import Session

from db.identity import ModelIdentity
from db.models import Scan, ScanStatus, utcnow
from db.queue import Expired, LeaseQueue


@dataclass(frozen=True)
class ScanOutcome:
    """The result of one scan: a probability, or an error saying why there is none."""

    scan_id: str
    probability_covid: Optional[float] = None
    label: Optional[str] = None
    error: Optional[str] = None
    # When this scan was preprocessed otherwise than the model's own way (a DICOM window).
    preprocessing: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.error is None) == (self.probability_covid is None):
            raise ValueError("a scan outcome carries either a probability or an error")


@dataclass(frozen=True)
class Lease:
    """One claimed scan: what a worker needs to classify it and to write its result."""

    scan_id: str
    job_id: str
    blob_key: str
    attempt: int
    queued_at: Optional[datetime] = None  # when its job was submitted (end-to-end latency)
    frame: Optional[int] = None  # the frame of a multi-frame DICOM file


def died_message(attempts: int) -> str:
    return f"worker died while processing this scan ({attempts} attempts)"


def _leases(session: Session, rows: Sequence[Row[Any]]) -> list[Lease]:
    """Claimed scans in job and upload order."""
    rows = sorted(rows, key=lambda r: (r.job_id, r.position))
    return [Lease(r.id, r.job_id, r.blob_key, r.attempts, r.queued_at, r.frame) for r in rows]


SCANS: LeaseQueue[Lease] = LeaseQueue(
    Scan,
    leases=_leases,
    returning=(Scan.job_id, Scan.blob_key, Scan.position, Scan.queued_at, Scan.frame),
    tie_break=(Scan.job_id, Scan.position),
    on_claim=lambda now: {"started_at": func.coalesce(Scan.started_at, now)},
    died=(
        literal("worker died while processing this scan (")
        + cast(Scan.attempts, String)
        + literal(" attempts)")
    ),
)
"""Waiting scans, by priority, then queue time, then job and upload order."""


def claim_next(session: Session, owner: str, limit: int, lease_seconds: float) -> list[Lease]:
    """Lease up to ``limit`` waiting scans to ``owner``: highest priority first, then oldest.

    On PostgreSQL rows another worker is claiming are skipped (``SKIP LOCKED``); SQLite
    serialises writers. Returns the leases in job and upload order.
    """
    return SCANS.claim(session, owner, limit, lease_seconds)


def renew_leases(session: Session, owner: str, lease_seconds: float) -> int:
    """The heartbeat: push back the expiry of every lease ``owner`` holds; returns how many."""
    return SCANS.renew(session, owner, lease_seconds)


def release_leases(session: Session, owner: str, scan_ids: Optional[Sequence[str]] = None) -> int:
    """Give leases back at once (a worker stopping): the scans wait again, attempt not counted.

    ``scan_ids`` limits it to those scans; None releases all of ``owner``'s leases.
    """
    return SCANS.release(session, owner, scan_ids)


def expire_leases(session: Session, max_attempts: int, now: Optional[datetime] = None) -> Expired:
    """Scans whose lease ran out before ``now`` (their worker died): back to the queue, or
    failed for good.

    A scan of a cancelled job is cancelled; one that has had ``max_attempts`` attempts
    fails with :func:`died_message`, so one poison file cannot crash-loop every worker.
    """
    return SCANS.expire(session, max_attempts, now)


def record_outcomes(
    session: Session,
    outcomes: Sequence[ScanOutcome],
    leases: Sequence[Lease],
    model: ModelIdentity,
    worker: Optional[str],
    owner: str,
) -> int:
    """Write each outcome if ``owner`` still holds that scan's lease; returns rows written.

    A scan whose lease expired and was taken over, was cancelled, deleted or already has
    a result keeps what it has: a result is written once.
    """
    return len(write_outcomes(session, outcomes, leases, model, worker, owner))


def write_outcomes(
    session: Session,
    outcomes: Sequence[ScanOutcome],
    leases: Sequence[Lease],
    model: ModelIdentity,
    worker: Optional[str],
    owner: str,
) -> list[tuple[ScanOutcome, Lease]]:
    """:func:`record_outcomes`, returning the outcomes written (with their leases)."""
    if len(outcomes) != len(leases):
        raise ValueError(f"{len(outcomes)} outcomes for {len(leases)} leases")
    now = utcnow()
    written: list[tuple[ScanOutcome, Lease]] = []
    for outcome, lease in zip(outcomes, leases):
        if outcome.scan_id != lease.scan_id:
            raise ValueError(f"outcome for {outcome.scan_id} paired with lease of {lease.scan_id}")
        changed = SCANS.finish(
            session,
            owner,
            lease.scan_id,
            lease.attempt,
            dict(
                status=ScanStatus.FAILED if outcome.error else ScanStatus.SUCCEEDED,
                probability_covid=outcome.probability_covid,
                label=outcome.label,
                error=outcome.error,
                **_identity_columns(model, outcome),
                worker=worker,
                finished_at=now,
                result_writes=Scan.result_writes + 1,
            ),
        )
        if changed:
            written.append((outcome, lease))
    return written


@dataclass(frozen=True)
class QueueDepth:
    """The queue as SQL sees it now (what the API's ``/metrics`` reports)."""

    waiting: dict[int, int]  # by priority rank (0 = high)
    leased: int
    oldest_waiting: Optional[datetime]


def queue_depth(session: Session) -> QueueDepth:
    """Waiting scans by priority, leased scans, the oldest waiting scan's queue time.

    Three aggregate queries that use the ``(status, priority, queued_at)`` index.
    """
    waiting = {
        int(priority): count
        for priority, count in session.execute(
            select(Scan.priority, func.count())
            .where(Scan.status == ScanStatus.QUEUED)
            .group_by(Scan.priority)
        )
    }
    leased = session.scalar(select(func.count()).where(Scan.status == ScanStatus.RUNNING)) or 0
    oldest = session.scalar(
        select(func.min(Scan.queued_at)).where(Scan.status == ScanStatus.QUEUED)
    )
    return QueueDepth(waiting, leased, oldest)


def _identity_columns(model: ModelIdentity, outcome: ScanOutcome) -> dict:
    columns = model.scan_columns()
    if outcome.preprocessing is not None:
        columns["preprocessing"] = outcome.preprocessing
    return columns

"""Exports in SQL: a job's results to send to PACS destinations, made once when the job ends,
then claimed, sent and recorded.

When a job ends, :func:`record_exports` makes one :class:`db.models.Export` row per series
with a result and destination in the job's ``export_to``, in the transaction that records
the end (:func:`db.webhooks.record_finished_jobs`). The row's SOP Instance UID and results
series UID are fixed then: every attempt sends the same instance. The sender claims due
rows under a lease (:data:`EXPORTS`, a :mod:`db.queue` lease queue, like webhook events:
the state stays ``pending`` under the lease, which frees the row when it expires) and
records each attempt with :func:`record_attempt`.
Every function takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from covidscan.contract import ExportKind, ExportState
from db.explanations import GRADCAM
from db.models import Explanation, Export, Job, Scan, ScanStatus, new_id, utcnow
from db.queue import LeaseQueue, reloaded
from db.series import job_series, min_series_slices
from db.session import rows_changed

log = logging.getLogger(__name__)

PENDING, STORED, COMMITTED, FAILED = (
    ExportState.PENDING,
    ExportState.STORED,
    ExportState.COMMITTED,
    ExportState.FAILED,
)
NOT_EXPORTED = ("cancelled",)
"""Job statuses whose series are not sent: a cancelled job's results were not wanted."""
ERROR_LENGTH = 500


def new_uid() -> str:
    """A DICOM UID from a random UUID (PS3.5 B.2: ``2.25.`` and its integer)."""
    return f"2.25.{uuid.uuid4().int}"


def record_exports(session: Session, statuses: Mapping[str, str]) -> list[str]:
    """Make the exports of the jobs that have just ended (``statuses``: job id → final
    status): one per series with a result and destination the job names (and one more for
    its Grad-CAM overlay when the job asked for explanations). Returns their ids.

    A series without a result (too few slices, no slice classified) makes none; the log
    says which, by job id and series UID only.
    """
    ids = [job_id for job_id, status in statuses.items() if status not in NOT_EXPORTED]
    if not ids:
        return []
    made: list[str] = []
    now = utcnow()
    jobs = session.scalars(select(Job).where(Job.id.in_(sorted(ids)), Job.export_to.is_not(None)))
    for job in jobs:
        destinations = list(job.export_to or [])
        if not destinations:
            continue
        fewest = min_series_slices(job.intended_use)
        for series in job_series(session, job.id, job.series_rule, fewest):
            if series.series_uid is None:
                continue
            if series.probability_covid is None:
                reason = series.skipped or "no slice of it was classified"
                log.info(
                    "job %s: series %s has no result, nothing exported: %s",
                    job.id,
                    series.series_uid,
                    reason,
                )
                continue
            # the SR, and with Grad-CAM asked for, the overlay: each kind in a results
            # series of its own (a series holds one modality), the same for every destination
            kinds = [ExportKind.SR] + ([ExportKind.OVERLAY] if job.explain == GRADCAM else [])
            for kind in kinds:
                results_series = new_uid()
                for name in destinations:
                    row = Export(
                        id=new_id(),
                        job_id=job.id,
                        owner=job.owner,
                        destination=name,
                        kind=kind,
                        study_uid=series.study_uid,
                        series_uid=series.series_uid,
                        results_series_uid=results_series,
                        sop_instance_uid=new_uid(),
                        state=PENDING,
                        attempts=0,
                        created_at=now,
                        next_attempt_at=now,
                    )
                    session.add(row)
                    made.append(row.id)
    return made


def explanations_waiting(session: Session, job_id: str, series_uid: str) -> int:
    """How many Grad-CAM explanations of the series' slices are still to be made."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Explanation)
            .join(Scan, Scan.id == Explanation.scan_id)
            .where(
                Explanation.job_id == job_id,
                Explanation.method == GRADCAM,
                Scan.series_uid == series_uid,
                Explanation.status.in_((ScanStatus.QUEUED, ScanStatus.RUNNING)),
            )
        )
        or 0
    )


EXPORTS: LeaseQueue[Export] = LeaseQueue(
    Export,
    leases=reloaded(Export),
    status=Export.state,
    waiting=PENDING,
    leased=None,
    claimable=lambda now: Export.next_attempt_at <= now,
    order_by=(Export.next_attempt_at, Export.id),
)
"""Pending exports whose next attempt is due, by due time; a lease holds one for an attempt.

Its state stays pending under the lease, which frees it when it expires (a sender that
died mid-way); retries stop after ``EXPORT_RETRY_WINDOW`` (:func:`core.webhooks.next_attempt`).
"""


def claim_due_exports(
    session: Session,
    limit: int,
    lease_seconds: float,
    now: Optional[datetime] = None,
    exclude: Sequence[str] = (),
) -> list[Export]:
    """Lease up to ``limit`` due exports (but those in ``exclude``) for one attempt each
    (counted now)."""
    now = now or utcnow()
    where = [Export.id.not_in(list(exclude))] if exclude else []
    ids = EXPORTS.pick(session, limit, *where, now=now)
    if not ids:
        return []
    return EXPORTS.leases(session, EXPORTS.take(session, ids, None, lease_seconds, now))


def record_attempt(session: Session, export: Export, values: dict[str, Any]) -> bool:
    """Write where ``export`` stands after the attempt of its claim (``values``: its new
    state and times, an error), ending the lease. False (nothing written) when the row is
    gone (its job deleted, its destination removed) or another claim took it since."""
    if values.get("error"):
        values = {**values, "error": str(values["error"])[:ERROR_LENGTH]}
    ours = and_(Export.id == export.id, Export.attempts == export.attempts)
    if rows_changed(
        session,
        update(Export)
        .where(ours, Export.state == PENDING)
        .values(lease_expires_at=None, **values)
        .execution_options(synchronize_session=False),
    ):
        return True
    if values.get("state") != STORED or not values.get("transaction_uid"):
        return False
    # The PACS's Storage Commitment report came before this attempt was recorded, and
    # moved the export on (db.commitment): the C-STORE is recorded beside it.
    return bool(
        rows_changed(
            session,
            update(Export)
            .where(
                ours,
                Export.state.in_((COMMITTED, FAILED)),
                Export.transaction_uid == values["transaction_uid"],
            )
            .values(
                stored_at=func.coalesce(Export.stored_at, values["stored_at"]),
                lease_expires_at=None,
                next_attempt_at=None,
            )
            .execution_options(synchronize_session=False),
        )
    )


def note_missing_commitments(
    session: Session, timeout_seconds: float, now: Optional[datetime] = None
) -> int:
    """Stored exports whose Storage Commitment report has not come within
    ``timeout_seconds`` keep ``stored``, with an error saying so. Returns how many."""
    now = now or utcnow()
    return rows_changed(
        session,
        update(Export)
        .where(
            Export.state == STORED,
            Export.transaction_uid.is_not(None),
            Export.error.is_(None),
            Export.stored_at < now - timedelta(seconds=timeout_seconds),
        )
        .values(error=f"no Storage Commitment report within {timeout_seconds:g} s of the C-STORE")
        .execution_options(synchronize_session=False),
    )


def job_exports(session: Session, job_id: str) -> list[Export]:
    """A job's exports, in the order they were made."""
    return list(
        session.scalars(
            select(Export)
            .where(Export.job_id == job_id)
            .order_by(Export.created_at, Export.series_uid, Export.destination, Export.kind)
        )
    )


def fail_destination_exports(session: Session, name: str) -> int:
    """A destination removed: its pending exports fail, saying so. Returns how many."""
    return rows_changed(
        session,
        update(Export)
        .where(Export.destination == name, Export.state == PENDING)
        .values(
            state=FAILED,
            error=f"destination {name} was removed",
            next_attempt_at=None,
            lease_expires_at=None,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False),
    )


def delete_job_exports(session: Session, job_id: str) -> None:
    """A deleted job's exports go with it (SQLite may not cascade)."""
    session.execute(delete(Export).where(Export.job_id == job_id))

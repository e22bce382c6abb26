"""Retrievals in the database: a cohort to pull from a PACS, one leased item per identifier.

The items wait in the one lease queue (:mod:`db.queue`) until the DICOM gateway claims
them. Every function takes a ``session``; the caller owns the transaction. Accession
numbers arrive sealed (:mod:`core.retrievals`): nothing here ever sees them in plain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Row, delete, or_, select, update
from sqlalchemy.orm import Session

from covidscan.contract import RetrievalOutcome, RetrievalStatus, ScanStatus
from db.jobs import ANY_OWNER
from db.models import Retrieval, RetrievalItem, utcnow
from db.queue import LeaseQueue
from db.session import rows_changed

BY_ACCESSION, BY_STUDY_UID = "accession_number", "study_uid"


@dataclass(frozen=True)
class ItemLease:
    """A retrieval item a gateway holds: which one, its attempt, and where it sits."""

    id: str
    attempt: int
    retrieval_id: str
    position: int


def _leases(_session: Session, rows: Sequence[Row[Any]]) -> list[ItemLease]:
    return [ItemLease(r.id, r.attempts, r.retrieval_id, r.position) for r in rows]


RETRIEVAL_ITEMS: LeaseQueue[ItemLease] = LeaseQueue(
    RetrievalItem,
    leases=_leases,
    returning=(RetrievalItem.retrieval_id, RetrievalItem.position),
    claimable=lambda now: or_(RetrievalItem.not_before.is_(None), RetrievalItem.not_before <= now),
    tie_break=(RetrievalItem.retrieval_id, RetrievalItem.position),
    died="the DICOM gateway died while retrieving this study",
)
"""Waiting retrieval items that are due, oldest retrieval first, then in the order asked."""


def create_retrieval(
    session: Session,
    owner: str,
    key_id: Optional[str],
    source: str,
    by: str,
    count: int,
    *,
    sealed_accessions: Optional[bytes] = None,
    study_uids: Optional[list[str]] = None,
) -> Retrieval:
    """A retrieval of ``count`` identifiers and its waiting items, flushed (not committed)."""
    retrieval = Retrieval(
        owner=owner,
        key_id=key_id,
        source=source,
        by=by,
        sealed_accessions=sealed_accessions,
        study_uids=study_uids,
    )
    retrieval.items = [
        RetrievalItem(position=index, status=ScanStatus.QUEUED, outcome=RetrievalOutcome.QUEUED)
        for index in range(count)
    ]
    session.add(retrieval)
    session.flush()
    return retrieval


def find_retrieval(session: Session, retrieval_id: str, owner: object) -> Optional[Retrieval]:
    """The retrieval if ``owner`` owns it (or is :data:`db.jobs.ANY_OWNER`), else None."""
    query = select(Retrieval).where(Retrieval.id == retrieval_id)
    if owner is not ANY_OWNER:
        query = query.where(Retrieval.owner == owner)
    return session.scalars(query).first()


def recent_retrievals(session: Session, limit: int, owner: object) -> list[Retrieval]:
    """The newest retrievals of ``owner`` (:data:`db.jobs.ANY_OWNER`: everyone's) first."""
    query = select(Retrieval).order_by(Retrieval.created_at.desc()).limit(limit)
    if owner is not ANY_OWNER:
        query = query.where(Retrieval.owner == owner)
    return list(session.scalars(query))


def mark_found(
    session: Session,
    lease_owner: str,
    lease: ItemLease,
    study_uids: list[str],
    instances_expected: int,
) -> bool:
    """Record what the PACS found for a leased item, while ``lease_owner`` holds it."""
    return bool(
        rows_changed(
            session,
            update(RetrievalItem)
            .where(
                RetrievalItem.id == lease.id,
                RetrievalItem.lease_owner == lease_owner,
                RetrievalItem.attempts == lease.attempt,
                RetrievalItem.status == ScanStatus.RUNNING,
            )
            .values(
                outcome=RetrievalOutcome.FOUND,
                study_uids=study_uids,
                instances_expected=instances_expected,
            )
            .execution_options(synchronize_session=False),
        )
    )


def item_outcome(item: RetrievalItem) -> RetrievalOutcome:
    """An item's outcome as answered: one whose gateway died for the last time failed."""
    if item.status == ScanStatus.FAILED and item.outcome not in RetrievalOutcome.ended():
        return RetrievalOutcome.FAILED
    return item.outcome


def retrieval_status(items: Sequence[RetrievalItem], window_open: bool) -> RetrievalStatus:
    """Derived from the items: running while one is retrieved, waiting (for its window, if
    it is closed) while one waits, else done."""
    if any(item.status == ScanStatus.RUNNING for item in items):
        return RetrievalStatus.RUNNING
    if any(item.status == ScanStatus.QUEUED for item in items):
        return RetrievalStatus.QUEUED if window_open else RetrievalStatus.WAITING_WINDOW
    return RetrievalStatus.DONE


def delete_expired_retrievals(
    session: Session, retention_seconds: int, now: Optional[datetime] = None
) -> int:
    """Delete the retrievals (their sealed accession numbers with them) asked for more than
    ``retention_seconds`` ago whose items have all ended; 0 keeps them for ever. How many.
    The jobs they made follow their own retention."""
    if retention_seconds <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(seconds=retention_seconds)
    unfinished = select(RetrievalItem.retrieval_id).where(
        RetrievalItem.status.in_((ScanStatus.QUEUED, ScanStatus.RUNNING))
    )
    ids = list(
        session.scalars(
            select(Retrieval.id).where(
                Retrieval.created_at < cutoff, Retrieval.id.not_in(unfinished)
            )
        )
    )
    if ids:
        session.execute(delete(RetrievalItem).where(RetrievalItem.retrieval_id.in_(ids)))
        session.execute(delete(Retrieval).where(Retrieval.id.in_(ids)))
    return len(ids)

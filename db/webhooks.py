"""Job events for webhooks, in SQL: made once when a job ends, then delivered and recorded.

When a job ends (succeeded, partially succeeded, failed or cancelled), :func:`record_finished_jobs`
turns it into one event per destination (its ``callback_url`` and its owner's endpoints)
in the caller's transaction, the one that made the job end, and marks the job so it is
never done twice. A job whose end no transaction noticed (two workers writing its last
scans at once) is found by the sweep, which calls it without ids. Deliveries claim an
event under a lease (:data:`EVENTS`, a :mod:`db.queue` lease queue), and every attempt is
a :class:`db.models.WebhookDelivery` row.
Every function takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Exists, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from covidscan.contract import DeliveryOutcome, DeliveryState
from db.exports import record_exports
from db.jobs import FINISHED_STATUSES, summarise_jobs
from db.models import (
    Job,
    Scan,
    ScanStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    iso_utc,
    utcnow,
)
from db.queue import LeaseQueue, reloaded
from db.session import rows_changed

PENDING, DONE = DeliveryState.PENDING, "done"  # also a job's finish_event: pending, then done
DELIVERED, GONE, FAILED, RETRY = (
    DeliveryOutcome.DELIVERED,
    DeliveryOutcome.GONE,
    DeliveryOutcome.FAILED,
    DeliveryOutcome.RETRY,
)


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _unfinished(job_id_column: Any) -> Exists:
    return exists().where(Scan.job_id == job_id_column, Scan.status.not_in(ScanStatus.terminal()))


@dataclass(frozen=True)
class FinishedJobs:
    """What :func:`record_finished_jobs` did: the jobs that ended, each once (their final
    status, for the jobs-finished metric), and the events made for them."""

    statuses: dict[str, str]
    event_ids: list[str]


def record_finished_jobs(
    session: Session, job_ids: Optional[Iterable[str]] = None, limit: int = 100
) -> FinishedJobs:
    """Mark the jobs among ``job_ids`` that have just ended, and make their events and
    their exports (:func:`db.exports.record_exports`).

    This is the one moment a job's end is recorded: exactly once per job. None looks at
    every job whose end is still unrecorded (the sweep). The job rows are locked
    (PostgreSQL), so of two transactions finishing one job the later one sees the other's
    scans and records the end.
    """
    query = select(Job).where(Job.finish_event == PENDING)
    if job_ids is not None:
        query = query.where(Job.id.in_(sorted(set(job_ids))))
    else:
        query = query.where(Job.open_until.is_(None), ~_unfinished(Job.id)).limit(limit)
    jobs = list(session.scalars(query.order_by(Job.id).with_for_update()))
    if not jobs:
        return FinishedJobs({}, [])
    created: list[str] = []
    statuses: dict[str, str] = {}
    for summary in summarise_jobs(session, jobs):
        if summary.status not in FINISHED_STATUSES:
            continue
        job = summary.job
        job.finish_event = DONE
        statuses[job.id] = summary.status
        payload = {
            "type": f"job.{summary.status}",
            "timestamp": iso_utc(utcnow()),
            "data": {
                "job_id": job.id,
                "status": summary.status,
                "counts": summary.counts.as_dict(),
                "finished_at": iso_utc(summary.finished_at),
            },
        }
        for url in destinations(session, job):
            event = WebhookEvent(
                id=new_event_id(),
                job_id=job.id,
                owner=job.owner,
                url=url,
                type=payload["type"],
                payload=payload,
                state=PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
            )
            session.add(event)
            created.append(event.id)
    record_exports(session, statuses)  # the results its series send to PACS destinations
    session.flush()
    return FinishedJobs(statuses, created)


def destinations(session: Session, job: Job) -> list[str]:
    """The job's callback URL, then its owner's endpoints, each URL once."""
    urls = [job.callback_url] if job.callback_url else []
    if job.owner is not None:
        urls += session.scalars(
            select(WebhookEndpoint.url)
            .where(WebhookEndpoint.owner == job.owner)
            .order_by(WebhookEndpoint.created_at)
        )
    return list(dict.fromkeys(urls))


EVENTS: LeaseQueue[WebhookEvent] = LeaseQueue(
    WebhookEvent,
    leases=reloaded(WebhookEvent),
    status=WebhookEvent.state,
    waiting=PENDING,
    leased=None,
    claimable=lambda now: WebhookEvent.next_attempt_at <= now,
    order_by=(WebhookEvent.next_attempt_at,),
)
"""Pending events whose next attempt is due, by due time; a lease holds one for an attempt.

No priority and no owner: an event is claimed by id, by the delivery task its message
names. Its state stays pending under the lease, which frees it when it expires; retries
stop after a time window (:func:`core.webhooks.next_attempt`), not a count of attempts.
"""


def due_event_ids(session: Session, requeue_after: float, limit: int = 100) -> list[str]:
    """Events whose next attempt is due and that no queue holds (or held long ago), locked
    for this transaction (PostgreSQL). Rows another relay has locked are skipped, not
    waited for: relays run in the API, every worker and the sweep at once, and waiting on
    each other's rows in different orders would deadlock them."""
    now = utcnow()
    return EVENTS.pick(
        session,
        limit,
        or_(
            WebhookEvent.queued_at.is_(None),
            WebhookEvent.queued_at < now - timedelta(seconds=requeue_after),
        ),
        now=now,
    )


def mark_queued(session: Session, event_ids: Iterable[str]) -> None:
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(list(event_ids)))
        .values(queued_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def claim_event(session: Session, event_id: str, lease_seconds: float) -> Optional[WebhookEvent]:
    """Take the event for one attempt if it is due and no one holds it; None otherwise.

    The attempt is counted now, so a delivery that dies mid-way still counts.
    """
    now = utcnow()
    claimed = EVENTS.take(session, [event_id], None, lease_seconds, now)
    if not claimed:  # a message that came early leaves the event to the sweep when it is due
        session.execute(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_id,
                WebhookEvent.state == PENDING,
                WebhookEvent.next_attempt_at > now,
            )
            .values(queued_at=None)
            .execution_options(synchronize_session=False)
        )
        return None
    return EVENTS.leases(session, claimed)[0]


def endpoint_secret(session: Session, owner: Optional[str], url: str) -> Optional[str]:
    """The secret ``owner`` registered for ``url``, or None (the server's then signs)."""
    if owner is None:
        return None
    return session.scalar(
        select(WebhookEndpoint.secret).where(
            WebhookEndpoint.owner == owner, WebhookEndpoint.url == url
        )
    )


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt saw."""

    status_code: Optional[int]
    error: Optional[str]
    duration_ms: int
    retry_after: Optional[float] = None  # seconds the receiver asked to wait

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def record_attempt(
    session: Session,
    event: WebhookEvent,
    attempt: Attempt,
    outcome: str,
    next_attempt_at: Optional[datetime],
    at: datetime,
) -> bool:
    """Record the attempt of the claim on ``event`` and where the event stands now.

    ``at`` is when the attempt ended (its answer seen), the moment ``next_attempt_at`` was
    reckoned from; a commit held up behind a lock does not move it.

    Returns False (nothing written) when the event is gone (its job deleted) or another
    claim has taken it since.
    """
    state = PENDING if outcome == RETRY else outcome
    updated = rows_changed(
        session,
        update(WebhookEvent)
        .where(
            WebhookEvent.id == event.id,
            WebhookEvent.attempts == event.attempts,
            WebhookEvent.state == PENDING,
        )
        .values(
            state=state,
            next_attempt_at=next_attempt_at,
            lease_expires_at=None,
            queued_at=None,
            finished_at=None if state == PENDING else utcnow(),
        )
        .execution_options(synchronize_session=False),
    )
    if not updated:
        return False
    session.add(
        WebhookDelivery(
            event_id=event.id,
            job_id=event.job_id,
            attempt=event.attempts,
            at=at,
            status_code=attempt.status_code,
            error=attempt.error and attempt.error[:500],
            duration_ms=attempt.duration_ms,
            outcome=outcome,
            next_attempt_at=next_attempt_at,
        )
    )
    return True


def stop_endpoint_events(session: Session, owner: str, url: str) -> int:
    """An endpoint deleted: its pending events stop (``failed``), except those of jobs that
    named the URL as their own callback_url. Returns how many stopped."""
    return rows_changed(
        session,
        update(WebhookEvent)
        .where(
            WebhookEvent.owner == owner,
            WebhookEvent.url == url,
            WebhookEvent.state == PENDING,
            WebhookEvent.job_id.not_in(select(Job.id).where(Job.callback_url == url)),
        )
        .values(state=FAILED, next_attempt_at=None, lease_expires_at=None, finished_at=utcnow())
        .execution_options(synchronize_session=False),
    )


def job_deliveries(
    session: Session, job_id: str
) -> list[tuple[WebhookEvent, list[WebhookDelivery]]]:
    """A job's events with their attempts, oldest first."""
    events = list(
        session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.job_id == job_id)
            .order_by(WebhookEvent.created_at, WebhookEvent.id)
        )
    )
    attempts: dict[str, list[WebhookDelivery]] = {event.id: [] for event in events}
    for row in session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
    ):
        attempts.setdefault(row.event_id, []).append(row)
    return [(event, attempts[event.id]) for event in events]


def delete_job_webhooks(session: Session, job_id: str) -> None:
    """A deleted job's events and attempts go with it (SQLite may not cascade)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job_id))
    session.execute(delete(WebhookEvent).where(WebhookEvent.job_id == job_id))

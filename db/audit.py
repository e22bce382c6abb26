"""The audit log: who (key id, owner) did what to which job, and when.

Rows name jobs and models by id or reference only, never a slice's content or file name.
Every function takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEvent

ACTIONS = (
    "job.submit",
    "job.add_scans",
    "job.seal",
    "job.upload_urls",
    "results.read",
    "results.csv",
    "thumbnail.view",
    "job.cancel",
    "job.delete",
    "model.add",
    "model.set_default",
    "model.remove",
    "key.create",
    "key.revoke",
    "session.open",
    "webhook.create",
    "webhook.delete",
    "explanation.request",
    "heatmap.view",
    "series.read",
    "series.sr",
    "destination.add",
    "destination.remove",
    "export_defaults.set",
    "retrieval.create",
)


def record(
    session: Session,
    action: str,
    *,
    key_id: Optional[str],
    owner: Optional[str],
    job_id: Optional[str] = None,
    detail: Optional[dict[str, Any]] = None,
) -> AuditEvent:
    """Add one event (not committed).

    Raises:
        ValueError: ``action`` is not one of :data:`ACTIONS`.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    event = AuditEvent(action=action, key_id=key_id, owner=owner, job_id=job_id, detail=detail)
    session.add(event)
    return event


def events_page(
    session: Session,
    limit: int,
    before_id: Optional[int] = None,
    owner: Optional[str] = None,
    job_id: Optional[str] = None,
    action: Optional[str] = None,
) -> tuple[list[AuditEvent], Optional[int]]:
    """Events newest first, optionally filtered.

    Returns:
        The page and the cursor for the next (older) page, or None on the last page.
    """
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    if owner is not None:
        query = query.where(AuditEvent.owner == owner)
    if job_id is not None:
        query = query.where(AuditEvent.job_id == job_id)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    events = list(session.scalars(query))
    if len(events) > limit:
        return events[:limit], events[limit - 1].id
    return events, None

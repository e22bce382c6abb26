"""The audit trail of the API, and ``GET /v1/audit`` for administrators."""

from __future__ import annotations

from typing import Any, Optional

from flask import Blueprint, Response, jsonify, request

from api.auth import current_principal, requires
from api.extensions import db_session
from api.fields import validated
from api.openapi import operation
from api.schemas import AuditPage, AuditQuery
from api.serialize import iso
from db.audit import events_page, record
from db.models import AuditEvent

bp = Blueprint("audit", __name__, url_prefix="/v1/audit")


def audit(
    action: str,
    job_id: Optional[str] = None,
    detail: Optional[dict[str, Any]] = None,
    commit: bool = True,
) -> None:
    """Record that the caller did ``action`` (to ``job_id``), and commit it.

    ``commit=False`` leaves it in the request's transaction, so that it is written with
    what it records or not at all.
    """
    principal = current_principal()
    session = db_session()
    record(
        session,
        action,
        key_id=principal.key_id,
        owner=principal.owner,
        job_id=job_id,
        detail=detail,
    )
    if commit:
        session.commit()


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "key_id": event.key_id,
        "owner": event.owner,
        "action": event.action,
        "job_id": event.job_id,
        "detail": event.detail,
    }


@bp.get("")
@requires("admin")
@operation("The audit log (administrators)", query=AuditQuery, responses={200: AuditPage})
def list_events() -> Response:
    """Newest first; ``owner``, ``job_id`` and ``action`` filter; ``cursor`` pages back."""
    query = validated(AuditQuery, request.args)  # a cursor is an event id: a 32-bit integer
    events, next_cursor = events_page(
        db_session(),
        query.limit,
        query.cursor,
        owner=query.owner,
        job_id=query.job_id,
        action=query.action,
    )
    return jsonify(
        events=[event_json(e) for e in events],
        next_cursor=None if next_cursor is None else str(next_cursor),
    )

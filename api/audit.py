"""The audit trail of the API, and ``GET /v1/audit`` for administrators."""
from __future__ import annotations

from typing import Any, Optional

from flask import Blueprint, Response, jsonify, request

from api.auth import current_principal, requires
from api.extensions import db_session
from api.openapi import operation
from api.problems import Problem
from api.schemas import AuditPage, AuditQuery
from api.security import whole_number
from api.serialize import iso
from db.audit import ACTIONS, events_page, record
from db.models import AuditEvent

bp = Blueprint("audit", __name__, url_prefix="/v1/audit")
DEFAULT_PAGE, MAX_PAGE = 100, 1000
MAX_CURSOR = 2**31 - 1


def audit(action: str, job_id: Optional[str] = None,
          detail: Optional[dict[str, Any]] = None, commit: bool = True) -> None:
    """Record that the caller did ``action`` (to ``job_id``), and commit it.

    ``commit=False`` leaves it in the request's transaction, so that it is written with
    what it records or not at all.
    """
    principal = current_principal()
    session = db_session()
    record(session, action, key_id=principal.key_id, owner=principal.owner, job_id=job_id,
           detail=detail)
    if commit:
        session.commit()


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {"id": event.id, "at": iso(event.at), "key_id": event.key_id,
            "owner": event.owner, "action": event.action, "job_id": event.job_id,
            "detail": event.detail}


def _page_args() -> tuple[int, Optional[int]]:
    try:
        limit = whole_number(request.args.get("limit") or str(DEFAULT_PAGE))
        cursor = request.args.get("cursor")
        before = whole_number(cursor) if cursor else None
    except ValueError:
        raise Problem(400, "limit and cursor must be whole numbers") from None
    if not 1 <= limit <= MAX_PAGE:
        raise Problem(400, f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if before is not None and not 0 <= before <= MAX_CURSOR:
        # An event id is a 32-bit integer column: a larger cursor is no cursor we gave out.
        raise Problem(400, f"cursor must be between 0 and {MAX_CURSOR}, got {before}")
    return limit, before


@bp.get("")
@requires("admin")
@operation("The audit log (administrators)", query=AuditQuery, responses={200: AuditPage})
def list_events() -> Response:
    """Newest first; ``owner``, ``job_id`` and ``action`` filter; ``cursor`` pages back."""
    limit, before = _page_args()
    action = request.args.get("action") or None
    if action is not None and action not in ACTIONS:
        raise Problem(400, f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    events, next_cursor = events_page(db_session(), limit, before,
                                      owner=request.args.get("owner") or None,
                                      job_id=request.args.get("job_id") or None, action=action)
    return jsonify(events=[event_json(e) for e in events],
                   next_cursor=None if next_cursor is None else str(next_cursor))

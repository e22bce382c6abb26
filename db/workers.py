"""Data functions for worker status: who is ready, what serves, and heartbeats.

Every function takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import WorkerStatus, utcnow
from db.session import rows_changed

HEARTBEAT_SECONDS = 10
STALE_AFTER = timedelta(seconds=3 * HEARTBEAT_SECONDS)


def announce(session: Session, name: str, pid: int, engines: list[dict[str, Any]]) -> None:
    """Record ``name`` as ready with its engines (a restart under the same name replaces it)."""
    now = utcnow()
    row = session.get(WorkerStatus, name)
    if row is None:
        row = WorkerStatus(name=name)
        session.add(row)
    row.pid, row.started_at, row.heartbeat_at = pid, now, now
    row.ready, row.engines = True, engines


def beat(session: Session, name: str, engines: Optional[list[dict[str, Any]]] = None) -> bool:
    """Renew the heartbeat (and the engines, when given); False when the row is gone."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if engines is not None:
        values["engines"] = engines
    return (
        rows_changed(
            session, update(WorkerStatus).where(WorkerStatus.name == name).values(**values)
        )
        > 0
    )


def withdraw(session: Session, name: str) -> None:
    session.execute(delete(WorkerStatus).where(WorkerStatus.name == name))


def live_workers(session: Session, now: Optional[datetime] = None) -> list[WorkerStatus]:
    """Workers whose heartbeat is recent, by name."""
    now = now or utcnow()
    rows = session.scalars(select(WorkerStatus).order_by(WorkerStatus.name))
    return [row for row in rows if row.heartbeat_at >= now - STALE_AFTER]

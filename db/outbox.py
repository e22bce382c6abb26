"""The wake-up outbox: wake-ups are rows written with the work, sent to Redis after commit.

Redis only wakes workers; what must run is in SQL. Writing the wake-ups in the same
transaction as the work, and sending them afterwards, means a crash or a Redis error
between the commit and the send loses no wake-up: the rows stay until a relay (the API
right after its commit, or any sweep) has sent them. A wake-up sent twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Wakeup

log = logging.getLogger(__name__)

SendWakeups = Callable[[int], None]
"""Sends this many wake-up tasks to the queue; raises on any failure."""


def add_wakeups(session: Session, tasks: int, reason: str) -> Wakeup:
    """Add a wake-up row to the caller's transaction."""
    row = Wakeup(tasks=max(1, tasks), reason=reason[:100])
    session.add(row)
    return row


def relay(session_factory: sessionmaker[Session], send: SendWakeups, limit: int = 100) -> int:
    """Send waiting wake-ups and delete each once sent; returns the tasks sent.

    Stops at the first failure and leaves that row and the rest for the next relay.
    """
    sent = 0
    with session_factory() as session:
        rows = list(
            session.execute(select(Wakeup.id, Wakeup.tasks).order_by(Wakeup.id).limit(limit))
        )
    for row_id, tasks in rows:
        try:
            send(tasks)
        except Exception as exc:  # any Redis error (connection, MISCONF, OOM…): try later
            log.warning(
                "wake-ups not sent, kept for the next relay: %s: %s", type(exc).__name__, exc
            )
            break
        with session_factory.begin() as session:
            session.execute(delete(Wakeup).where(Wakeup.id == row_id))
        sent += tasks
    return sent


def pending_wakeups(session: Session) -> int:
    """Wake-up rows not sent yet."""
    return session.scalar(select(func.count()).select_from(Wakeup)) or 0

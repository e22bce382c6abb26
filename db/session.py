"""Engine and session factory. Nothing connects until a session is used."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL's deadlock_detected and serialization_failure: it rolled the transaction back,
# and running it again is the documented answer.
CONFLICTS = frozenset({"40P01", "40001"})
CONFLICT_ATTEMPTS = 5


def make_engine(database_url: str) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so the API and workers can share it."""
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def in_transaction(
    session_factory: sessionmaker[Session],
    work: Callable[[Session], T],
    attempts: int = CONFLICT_ATTEMPTS,
) -> T:
    """Run ``work`` in one transaction and commit; run it again, whole, when PostgreSQL
    aborted it to break a deadlock with another writer (a worker writing results, the
    heartbeat) that locked the same rows in another order. Other errors propagate."""
    for attempt in range(1, attempts + 1):
        try:
            with session_factory.begin() as session:
                return work(session)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if attempt == attempts or sqlstate not in CONFLICTS:
                raise
            log.info("transaction aborted by a conflict (SQLSTATE %s); running it again", sqlstate)
            time.sleep(random.uniform(0.02, 0.1) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed.

    (``Session.execute`` is typed as returning a plain ``Result``; for these statements it is
    a ``CursorResult``, which has the count.)
    """
    return cast(CursorResult[Any], session.execute(statement)).rowcount

"""Per-app services: database sessions, the blob store and the task queue."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from covidscan.contract import INFER_QUEUE, INFER_TASK, PRECISION_OPTION
from covidscan.settings import Settings
from db.blobs import BlobStore
from db.session import make_engine, make_session_factory


class TaskQueue:
    """Sends inference work to Redis by task name; never imports the worker."""

    def __init__(self, redis_url: str, chunk_size: int) -> None:
        self.redis_url = redis_url
        self.chunk_size = chunk_size
        self._celery = Celery("covidscan-api", broker=redis_url, set_as_current=False)
        self._celery.conf.update(task_serializer="json", accept_content=["json"],
                                 task_ignore_result=True, broker_connection_timeout=5,
                                 task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                            "interval_step": 0.5})

    def enqueue_scans(self, scan_ids: Sequence[str], precision: Optional[str] = None) -> int:
        """Send the scans in chunks of ``chunk_size``; returns the number of tasks sent.

        ``precision``, when the job asks for one, travels with each chunk.
        """
        sent = 0
        options = {PRECISION_OPTION: precision} if precision else {}
        for start in range(0, len(scan_ids), self.chunk_size):
            chunk = list(scan_ids[start:start + self.chunk_size])
            self._celery.send_task(INFER_TASK, args=[chunk], kwargs=options, queue=INFER_QUEUE)
            sent += 1
        return sent


@dataclass
class Services:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    queue: TaskQueue
    extras: dict[str, Any] = field(default_factory=dict)  # the rate limiter and the quotas


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["covidscan"] = Services(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings.database_url)),
        blobs=BlobStore(settings.blob_dir),
        queue=TaskQueue(settings.redis_url, settings.batch_size),
    )

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def services() -> Services:
    return current_app.extensions["covidscan"]


def db_session() -> Session:
    """The request's session, closed at teardown."""
    if "db_session" not in g:
        g.db_session = services().session_factory()
    return g.db_session

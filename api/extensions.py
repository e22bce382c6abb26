"""Per-app services: database sessions, the blob store and the wake-up sender."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from core.wakeups import WakeupSender
from covidscan.settings import Settings
from db.blobs import BlobStore, open_blob_store
from db.session import make_engine, make_session_factory


@dataclass
class Services:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    send_wakeups: WakeupSender
    extras: dict[str, Any] = field(default_factory=dict)  # the rate limiter and the quotas


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["covidscan"] = Services(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings.database_url)),
        blobs=open_blob_store(settings.blob_dir, settings.blob_store),
        send_wakeups=WakeupSender(settings.redis_url),
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

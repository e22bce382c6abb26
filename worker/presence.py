"""A worker's status row: announced once its default model is warm, renewed by a heartbeat.

The API counts ready workers from these rows (``/readyz``) and shows which engine and
precision serve each model on each worker, with their gates and measured speed
(``GET /v1/workers``). A worker that dies stops renewing; its row goes stale.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Optional

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.workers import HEARTBEAT_SECONDS, announce, beat, withdraw

log = logging.getLogger(__name__)


class Presence:
    """Keeps this worker's row in ``worker_status`` while it runs."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        name: str,
        engines: Callable[[], list[dict[str, Any]]],
        interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.session_factory = session_factory
        self.name = name
        self.engines = engines
        self.interval = interval
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._announced = False
        self._written = False

    def start(self) -> Presence:
        """Announce the worker ready, then renew the row every ``interval`` seconds.

        A database that refuses the first announcement (away, or locked beyond its busy
        timeout) does not lose it: the loop tries again every second until it is written.
        """
        self._written = self._write()
        self._thread = threading.Thread(target=self._loop, name="presence", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> bool:
        """Announce this worker, or renew its row (announcing it again if gone); False on error."""
        try:
            with self.session_factory.begin() as session:
                # The first write replaces a row a previous start under this name left.
                if not self._announced or not beat(session, self.name, self.engines()):
                    announce(session, self.name, os.getpid(), self.engines())
        except SQLAlchemyError as exc:  # the database is away; the loop tries again
            log.warning("worker status not written (tried again in 1 s): %s", exc)
            return False
        if not self._announced:
            self._announced = True
            log.info("%s is ready: its default model is warm", self.name)
        return True

    def refresh(self) -> None:
        """Write the engines now rather than at the next beat (a new engine was built)."""
        self._changed.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.interval if self._written else min(1.0, self.interval))
            self._changed.clear()
            if self._stop.is_set():
                return
            self._written = self._write()

    def stop(self) -> None:
        """Stop the heartbeat and remove the row, so the worker is no longer counted."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        try:
            with self.session_factory.begin() as session:
                withdraw(session, self.name)
        except SQLAlchemyError as exc:
            log.warning("could not withdraw the worker status row: %s", exc)

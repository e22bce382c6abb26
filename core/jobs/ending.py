"""A job's end, recorded once: the one sequence every writer that may end a job runs.

Whoever commits the change that ends a job (a worker writing its last results, a cancel,
a seal of a job whose scans are all done, the sweep) records the end in the same
transaction (:func:`db.webhooks.record_finished_jobs`, which makes its webhook events),
commits, counts it on ``covidscan_jobs_finished_total`` and queues the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional, Protocol

from sqlalchemy.orm import Session, sessionmaker

from core.metrics import count_finished
from core.webhooks import relay_events
from db.webhooks import FinishedJobs, record_finished_jobs


class Deliveries(Protocol):
    """What queues webhook deliveries (:class:`core.wakeups.WakeupSender`)."""

    def deliver(self, event_ids: Sequence[str], countdown: Optional[float] = None) -> None:
        """One delivery task per event id (see :data:`core.webhooks.SendDeliveries`)."""


def commit_ending(
    session: Session,
    job_ids: Optional[Iterable[str]],
    session_factory: sessionmaker[Session],
    deliveries: Optional[Deliveries],
) -> FinishedJobs:
    """Record the jobs among ``job_ids`` (None: any whose end is unrecorded) that the
    session's changes end, commit, count them and queue their webhook events.

    With ``deliveries`` None the events wait for the next relay (the sweep's own).
    """
    finished = record_finished_jobs(session, job_ids)
    session.commit()
    count_finished(finished.statuses.values())
    if finished.event_ids and deliveries is not None:
        relay_events(session_factory, deliveries.deliver)
    return finished

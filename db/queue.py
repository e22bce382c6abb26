"""One lease queue in SQL: claim by priority, renew, release, expire with an attempts cap.

Work waits as rows of one table. A worker claims the next waiting rows (highest priority
first, then the oldest) under a lease: its owner id and an expiry, pushed back by a
heartbeat while it works, given back when it stops. A lease whose worker died expires:
its row waits again, or fails once it has had ``max_attempts`` attempts, so one poison
row cannot crash-loop every worker; a row of a cancelled job is cancelled instead.

Scans and explanations (:class:`db.models.LeaseMixin` rows) are such queues, each a
:class:`LeaseQueue` with its own hooks: what else makes a row claimable, how ties are
broken, what a claim sets and what it hands the worker. Webhook events keep their own
status while leased (``pending``: the lease alone marks them held, and an expired one frees
them with no expiry pass); they use :meth:`LeaseQueue.pick` and :meth:`LeaseQueue.take`.
Every method takes a ``session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Optional, TypeVar

from sqlalchemy import ColumnElement, Row, and_, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.models import Job, ScanStatus, utcnow
from db.session import rows_changed

L = TypeVar("L")

CLAIM_TRIES = 5
"""A claim that found rows but lost every one of them to other workers tries again."""


def reloaded(model: Any) -> Callable[[Session, Sequence[Row[Any]]], list[Any]]:
    """A ``leases`` hook that hands the worker the claimed rows themselves, re-read (their
    lease columns fresh), in claim order; a row deleted meanwhile is left out."""

    def rows(session: Session, claimed: Sequence[Row[Any]]) -> list[Any]:
        return [
            row
            for item in claimed
            if (row := session.get(model, item.id, populate_existing=True)) is not None
        ]

    return rows


@dataclass(frozen=True)
class Expired:
    """What :meth:`LeaseQueue.expire` did with the rows whose lease ran out."""

    requeued: int
    failed: int
    cancelled: int


class LeaseQueue(Generic[L]):
    """The lease protocol over one table, written once.

    Args:
        model: the mapped class; it has ``id``, ``attempts`` and ``lease_expires_at``, and
            unless ``leased`` is None, the other :class:`db.models.LeaseMixin` columns and
            ``job_id``, ``error`` and ``finished_at`` (what :meth:`expire` writes).
        leases: turns the claimed rows (``id``, ``attempts``, then ``returning``) into what
            the worker gets, in the order it should work on them.
        returning: more columns of a claimed row to hand to ``leases``.
        claimable: more conditions a waiting row must meet to be claimed at ``now``.
        order_by: the claim order; default priority, then queue time, then ``tie_break``.
        tie_break: columns that order rows of equal priority and queue time.
        on_claim: more values a claim sets at ``now``.
        died: the error of a row that failed because its attempts ran out.
        status, waiting, leased: the status column and its values for a waiting and a leased
            row. ``leased=None``: the status stays ``waiting`` under a lease, which holds the
            row until it expires by itself (no :meth:`expire` pass, no owner column).
    """

    def __init__(
        self,
        model: Any,
        *,
        leases: Callable[[Session, Sequence[Row[Any]]], list[L]],
        returning: Sequence[Any] = (),
        claimable: Optional[Callable[[datetime], ColumnElement[bool]]] = None,
        order_by: Optional[Sequence[Any]] = None,
        tie_break: Sequence[Any] = (),
        on_claim: Optional[Callable[[datetime], dict[str, Any]]] = None,
        died: Any = "worker died while processing this work",
        status: Optional[InstrumentedAttribute[Any]] = None,
        waiting: Any = ScanStatus.QUEUED,
        leased: Any = ScanStatus.RUNNING,
    ) -> None:
        self.model = model
        self.leases = leases
        self.returning = tuple(returning)
        self.extra = claimable
        self.order_by = (
            tuple(order_by)
            if order_by is not None
            else (model.priority, model.queued_at, *tie_break)
        )
        self.on_claim = on_claim
        self.died = died
        self.status = status if status is not None else model.status
        self.waiting, self.leased = waiting, leased

    def claimable(self, now: datetime) -> ColumnElement[bool]:
        """A row a worker may claim at ``now``."""
        model = self.model
        condition = self.status == self.waiting
        if self.leased is None:  # held while its lease lasts
            condition = and_(
                condition, or_(model.lease_expires_at.is_(None), model.lease_expires_at < now)
            )
        if self.extra is not None:
            condition = and_(condition, self.extra(now))
        return condition

    def pick(
        self,
        session: Session,
        limit: int,
        *where: ColumnElement[bool],
        now: Optional[datetime] = None,
    ) -> list[Any]:
        """The ids of the next ``limit`` claimable rows (and ``where``), in claim order.

        They stay locked until the transaction ends (PostgreSQL); rows another transaction
        holds are skipped, not waited for (``SKIP LOCKED``): claimers that waited on each
        other's rows, taken in different orders, would deadlock or serialise.
        """
        now = now or utcnow()
        return list(
            session.scalars(
                select(self.model.id)
                .where(self.claimable(now), *where)
                .order_by(*self.order_by)
                .limit(limit)
                .with_for_update(skip_locked=True, of=self.model)
            )
        )

    def take(
        self,
        session: Session,
        ids: Sequence[Any],
        owner: Optional[str],
        lease_seconds: float,
        now: Optional[datetime] = None,
    ) -> Sequence[Row[Any]]:
        """Lease those of ``ids`` still claimable to ``owner``; one attempt each, counted now
        (a worker that dies mid-way has used it). Returns the rows taken: ``id``,
        ``attempts``, then the ``returning`` columns."""
        model, now = self.model, now or utcnow()
        values: dict[str, Any] = dict(
            lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=model.attempts + 1
        )
        if self.leased is not None:
            values.update(status=self.leased, lease_owner=owner)
        if self.on_claim is not None:
            values.update(self.on_claim(now))
        return session.execute(
            update(model)
            .where(model.id.in_(list(ids)), self.claimable(now))
            .values(**values)
            .returning(model.id, model.attempts, *self.returning)
            .execution_options(synchronize_session=False)
        ).all()

    def claim(self, session: Session, owner: str, limit: int, lease_seconds: float) -> list[L]:
        """Lease up to ``limit`` claimable rows to ``owner``: highest priority first, then
        oldest. On PostgreSQL rows another worker is claiming are skipped; SQLite
        serialises writers."""
        for _ in range(CLAIM_TRIES):
            # Two statements, not UPDATE … WHERE id IN (SELECT … LIMIT): PostgreSQL may run
            # such a subquery more than once and, skipping locked rows, claim more than
            # ``limit``. The UPDATE checks again that each row is claimable, so a row another
            # worker took in between (SQLite) is not taken twice.
            ids = self.pick(session, limit)
            if not ids:
                return []
            rows = self.take(session, ids, owner, lease_seconds)
            if rows:
                return self.leases(session, rows)
        return []

    def _held(self, owner: str) -> ColumnElement[bool]:
        if self.leased is None:
            raise TypeError(
                f"{self.model.__name__} leases have no owner: they expire by themselves"
            )
        return and_(self.model.lease_owner == owner, self.status == self.leased)

    def renew(self, session: Session, owner: str, lease_seconds: float) -> int:
        """The heartbeat: push back the expiry of every lease ``owner`` holds; returns how many."""
        return rows_changed(
            session,
            update(self.model)
            .where(self._held(owner))
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False),
        )

    def finish(
        self, session: Session, owner: str, row_id: Any, attempt: int, values: dict[str, Any]
    ) -> bool:
        """Write a row's outcome (``values``, its final status among them) and end its lease,
        only while ``owner`` holds the lease of that ``attempt``: a redelivered or duplicated
        task, or a worker whose lease expired and was taken over, changes nothing."""
        model = self.model
        return bool(
            rows_changed(
                session,
                update(model)
                .where(model.id == row_id, self._held(owner), model.attempts == attempt)
                .values(lease_owner=None, lease_expires_at=None, **values)
                .execution_options(synchronize_session=False),
            )
        )

    def release(self, session: Session, owner: str, ids: Optional[Sequence[Any]] = None) -> int:
        """Give leases back at once (a worker stopping): the rows wait again, their attempt
        not counted. ``ids`` limits it to those rows; None releases all of ``owner``'s."""
        model = self.model
        query = update(model).where(self._held(owner))
        if ids is not None:
            query = query.where(model.id.in_(list(ids)))
        return rows_changed(
            session,
            query.values(
                {
                    self.status: self.waiting,
                    model.lease_owner: None,
                    model.lease_expires_at: None,
                    model.attempts: model.attempts - 1,
                }
            ).execution_options(synchronize_session=False),
        )

    def expire(
        self, session: Session, max_attempts: int, now: Optional[datetime] = None
    ) -> Expired:
        """Rows whose lease ran out before ``now`` (their worker died): cancelled when their
        job was, failed with ``died`` after ``max_attempts`` attempts, else waiting again."""
        if self.leased is None:
            raise TypeError(f"{self.model.__name__} leases expire by themselves")
        model, now = self.model, now or utcnow()
        expired = and_(self.status == self.leased, model.lease_expires_at < now)
        cleared = {model.lease_owner: None, model.lease_expires_at: None}
        cancelled_job = select(Job.id).where(Job.cancelled_at.is_not(None))
        ended = {**cleared, model.finished_at: now}

        def count(condition: ColumnElement[bool], values: dict[Any, Any]) -> int:
            return rows_changed(
                session,
                update(model)
                .where(condition)
                .values(values)
                .execution_options(synchronize_session=False),
            )

        cancelled = count(
            and_(expired, model.job_id.in_(cancelled_job)),
            {**ended, self.status: ScanStatus.CANCELLED},
        )
        failed = count(
            and_(expired, model.attempts >= max_attempts),
            {**ended, self.status: ScanStatus.FAILED, model.error: self.died},
        )
        requeued = count(expired, {**cleared, self.status: self.waiting})
        return Expired(requeued, failed, cancelled)

"""The lease queue itself (db.queue), over a table of its own: claim order, attempts,
release, renew, expiry, and claimers that never share a row."""

import threading
from datetime import datetime, timedelta
from typing import Optional

import pytest
from sqlalchemy import String, Text, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.models import Job, LeaseMixin, ScanStatus, UTCDateTime, new_id, utcnow
from db.queue import Expired, LeaseQueue
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.database


class Base(DeclarativeBase):
    pass


class Work(LeaseMixin, Base):
    """A kind of work that is neither a scan nor an explanation."""

    __tablename__ = "lease_queue_work"
    status_enum_name = "lease_queue_work_status"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(50))
    error: Mapped[Optional[str]] = mapped_column(Text)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())


def names(session, rows):
    return [row.name for row in sorted(rows, key=lambda row: row.name)]


QUEUE = LeaseQueue(Work, leases=names, returning=(Work.name,), tie_break=(Work.name,), died="died")


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    yield make_session_factory(engine)
    engine.dispose()


def add(sessions, *names_, priority=1, job_id="job", age=0.0):
    with sessions.begin() as session:
        for name in names_:
            session.add(
                Work(
                    name=name,
                    job_id=job_id,
                    priority=priority,
                    queued_at=utcnow() - timedelta(seconds=age),
                )
            )


def claim(sessions, owner, limit=10, lease=60, queue=QUEUE):
    with sessions.begin() as session:
        return queue.claim(session, owner, limit, lease)


def rows(sessions):
    with sessions() as session:
        return {w.name: w for w in session.scalars(select(Work))}


def expire_all(sessions):
    with sessions.begin() as session:
        session.execute(update(Work).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def expire(sessions, max_attempts=3):
    with sessions.begin() as session:
        return QUEUE.expire(session, max_attempts)


def test_claims_by_priority_then_age(sessions):
    add(sessions, "normal-new", priority=1)
    add(sessions, "normal-old", priority=1, age=60)
    add(sessions, "low-oldest", priority=2, age=600)
    add(sessions, "high-new", priority=0)
    order = [name for _ in range(4) for name in claim(sessions, "w", limit=1)]
    assert order == ["high-new", "normal-old", "normal-new", "low-oldest"]
    assert claim(sessions, "w") == []


def test_a_claim_leases_counts_an_attempt_and_takes_only_its_limit(sessions):
    add(sessions, "a", "b", "c")
    assert claim(sessions, "w", limit=2) == ["a", "b"]
    found = rows(sessions)
    assert [(found[n].status, found[n].lease_owner, found[n].attempts) for n in "abc"] == [
        (ScanStatus.RUNNING, "w", 1),
        (ScanStatus.RUNNING, "w", 1),
        (ScanStatus.QUEUED, None, 0),
    ]
    assert found["a"].lease_expires_at > utcnow() + timedelta(seconds=50)


def test_expiry_requeues_then_fails_after_the_attempts_cap(sessions):
    add(sessions, "poison")
    for attempt in (1, 2, 3):
        assert claim(sessions, f"w{attempt}") == ["poison"]
        assert expire(sessions).requeued == 0  # the lease has not run out yet
        expire_all(sessions)
        report = expire(sessions)
        assert (report.requeued, report.failed) == ((1, 0) if attempt < 3 else (0, 1))
    poison = rows(sessions)["poison"]
    assert (poison.status, poison.error, poison.attempts) == (ScanStatus.FAILED, "died", 3)
    assert poison.lease_owner is None and poison.finished_at is not None
    assert claim(sessions, "w4") == []


def test_expiry_cancels_the_work_of_a_cancelled_job(sessions):
    with sessions.begin() as session:
        session.add(Job(id="gone", cancelled_at=utcnow()))
    add(sessions, "kept", job_id="job")
    add(sessions, "dropped", job_id="gone")
    claim(sessions, "dead")
    expire_all(sessions)
    assert expire(sessions) == Expired(requeued=1, failed=0, cancelled=1)
    found = rows(sessions)
    assert (found["kept"].status, found["dropped"].status) == (
        ScanStatus.QUEUED,
        ScanStatus.CANCELLED,
    )


def test_release_gives_work_back_without_counting_an_attempt(sessions):
    add(sessions, "a", "b", "c")
    claim(sessions, "stopping")
    with sessions.begin() as session:
        assert QUEUE.release(session, "someone-else") == 0
        assert QUEUE.release(session, "stopping", [rows(sessions)["a"].id]) == 1
        assert QUEUE.release(session, "stopping") == 2
    assert {(w.status, w.attempts, w.lease_owner) for w in rows(sessions).values()} == {
        (ScanStatus.QUEUED, 0, None)
    }
    claim(sessions, "next")
    assert {w.attempts for w in rows(sessions).values()} == {1}


def test_renew_pushes_back_only_the_owners_leases(sessions):
    add(sessions, "mine")
    claim(sessions, "me", limit=1)
    add(sessions, "theirs")
    claim(sessions, "them", limit=1)
    expire_all(sessions)
    with sessions.begin() as session:
        assert QUEUE.renew(session, "me", 60) == 1
    report = expire(sessions)
    assert report.requeued == 1
    found = rows(sessions)
    assert (found["mine"].status, found["theirs"].status) == (ScanStatus.RUNNING, ScanStatus.QUEUED)


def test_a_claimable_hook_holds_work_back(sessions):
    add(sessions, "ready", "not-yet")
    queue = LeaseQueue(
        Work, leases=names, returning=(Work.name,), claimable=lambda now: Work.name != "not-yet"
    )
    assert claim(sessions, "w", queue=queue) == ["ready"]
    assert claim(sessions, "w", queue=queue) == []


def test_a_lease_without_a_leased_status_frees_the_row_when_it_runs_out(sessions):
    """The webhook events' shape: the status stays waiting; the lease alone holds the row."""
    add(sessions, "event")
    queue = LeaseQueue(Work, leases=names, returning=(Work.name,), leased=None)
    assert claim(sessions, "first", queue=queue) == ["event"]
    assert claim(sessions, "second", queue=queue) == []  # held
    expire_all(sessions)
    assert claim(sessions, "third", queue=queue) == ["event"]
    event = rows(sessions)["event"]
    assert (event.status, event.attempts, event.lease_owner) == (ScanStatus.QUEUED, 2, None)
    with sessions.begin() as session, pytest.raises(TypeError, match="expire by themselves"):
        queue.expire(session, 3)


def test_a_row_picked_by_one_claimer_and_taken_by_another_is_not_taken_twice(sessions):
    add(sessions, *"abcd")
    with sessions.begin() as first:
        picked = QUEUE.pick(first, 2)  # locked on PostgreSQL, not on SQLite
        other = claim(sessions, "other", limit=2)  # skips them, or takes them first
        taken = [row.name for row in QUEUE.take(first, picked, "first", 60)]
    assert len(other) == 2 and not set(taken) & set(other)
    found = rows(sessions)
    assert sorted(n for n, w in found.items() if w.lease_owner == "first") == sorted(taken)
    assert all(w.attempts == 1 for n, w in found.items() if n in taken + other)


def test_concurrent_claimers_never_share_a_row(sessions):
    add(sessions, *[f"{i:03}" for i in range(60)])
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def work(owner):
        start.wait()
        mine = claimed.setdefault(owner, [])
        while got := claim(sessions, owner, limit=3):
            mine.extend(got)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [name for names_ in claimed.values() for name in names_]
    assert sorted(every) == [f"{i:03}" for i in range(60)]  # each once, none left
    found = rows(sessions)
    assert all(
        found[name].lease_owner == owner for owner, names_ in claimed.items() for name in names_
    )

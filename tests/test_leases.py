"""The queue in SQL, as plain functions on a real database: leases, attempts, priority,
cancel, the outbox, retention."""

import threading
import time
from datetime import timedelta

import pytest
from redis.exceptions import ResponseError
from sqlalchemy import text, update

from core.sweep import delete_job, sweep_once
from covidscan.settings import load_settings
from db.blobs import FileBlobStore
from db.identity import ModelIdentity
from db.jobs import JobOptions, NewScan, cancel_job, create_job, summarise_job
from db.models import Job, Scan, ScanStatus, new_id, utcnow
from db.outbox import pending_wakeups, relay
from db.scans import (
    ScanOutcome,
    claim_next,
    expire_leases,
    record_outcomes,
    release_leases,
    renew_leases,
)
from db.session import make_engine, make_session_factory
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.database

IDENTITY = ModelIdentity("m", "1", "b" * 64, True, "tensorflow", "fp32", "seed-v1")
SETTINGS = load_settings({"MAX_ATTEMPTS": "3", "BATCH_SIZE": "4"})


@pytest.fixture
def sessions(database_url):
    factory = make_session_factory(make_engine(database_url))
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def blobs(tmp_path):
    return FileBlobStore(tmp_path / "blobs")


class Sent:
    """Records wake-ups, or fails like a Redis that refuses writes."""

    def __init__(self, error=None):
        self.tasks, self.error = 0, error

    def __call__(self, tasks):
        if self.error:
            raise self.error
        self.tasks += tasks


def submit(sessions, blobs, count, priority=1, retention=0, chunk=4):
    job_id = new_id()
    scans = []
    for i in range(count):
        key = blobs.key_for(job_id, i)
        blobs.put(key, b"x")
        scans.append(NewScan(f"{i}.png", key, 1))
    with sessions.begin() as session:
        create_job(
            session,
            scans,
            job_id,
            JobOptions(priority=priority, retention_seconds=retention, chunk_size=chunk),
        )
    return job_id


def claim(sessions, owner, limit=4, lease=15):
    with sessions.begin() as session:
        return claim_next(session, owner, limit, lease)


def write(sessions, leases, owner, p=0.25):
    with sessions.begin() as session:
        outcomes = [ScanOutcome(lease.scan_id, p, "NonCOVID") for lease in leases]
        return record_outcomes(session, outcomes, leases, IDENTITY, "w@host", owner)


def expire_all(sessions):
    """As if every lease's worker died: their expiry is in the past."""
    with sessions.begin() as session:
        session.execute(
            update(Scan)
            .where(Scan.status == ScanStatus.RUNNING)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def statuses(sessions, job_id):
    with sessions() as session:
        return [s.status.value for s in session.get(Job, job_id).scans]


def test_a_worker_claims_only_what_it_asks_for_and_two_never_share(sessions, blobs):
    job = submit(sessions, blobs, 10)
    first, second = claim(sessions, "a"), claim(sessions, "b")
    assert len(first) == len(second) == 4
    assert not {lease.scan_id for lease in first} & {lease.scan_id for lease in second}
    assert statuses(sessions, job).count("running") == 8
    assert [lease.attempt for lease in first] == [1] * 4


def test_priority_is_strict_among_waiting_scans(sessions, blobs):
    low = submit(sessions, blobs, 5, priority=2)
    normal = submit(sessions, blobs, 3, priority=1)
    high = submit(sessions, blobs, 2, priority=0)
    order = [[lease.job_id for lease in claim(sessions, "w")] for _ in range(3)]
    assert sorted(order[0]) == sorted([high] * 2 + [normal] * 2)
    assert sorted(order[1]) == sorted([normal] + [low] * 3)
    assert order[2] == [low] * 2


def test_only_the_lease_holder_writes_and_only_once(sessions, blobs):
    job = submit(sessions, blobs, 3)
    leases = claim(sessions, "a")
    assert write(sessions, leases, "someone-else") == 0  # not the holder
    assert write(sessions, leases, "a") == 3
    assert write(sessions, leases, "a", p=0.75) == 0  # a redelivered task
    with sessions() as session:
        scans = session.get(Job, job).scans
        assert [(s.status, s.probability_covid, s.result_writes, s.lease_owner) for s in scans] == [
            (ScanStatus.SUCCEEDED, 0.25, 1, None)
        ] * 3


def test_an_expired_lease_goes_back_and_its_late_worker_cannot_write(sessions, blobs):
    job = submit(sessions, blobs, 2)
    dead = claim(sessions, "dead")
    with sessions.begin() as session:  # not yet expired: nothing happens
        assert expire_leases(session, 3).requeued == 0
    expire_all(sessions)
    report = sweep_once(sessions, blobs, Sent(), SETTINGS)
    assert report.requeued == 2 and statuses(sessions, job) == ["queued"] * 2
    alive = claim(sessions, "alive")
    assert [lease.attempt for lease in alive] == [2, 2]
    assert write(sessions, dead, "dead") == 0  # it woke up after all: too late
    assert write(sessions, alive, "alive") == 2


def test_the_heartbeat_keeps_a_lease_alive(sessions, blobs):
    submit(sessions, blobs, 2)
    claim(sessions, "busy", lease=1)
    expire_all(sessions)
    with sessions.begin() as session:
        assert renew_leases(session, "busy", 15) == 2
        assert expire_leases(session, 3).requeued == 0


def test_a_poison_scan_fails_after_max_attempts_with_the_reason(sessions, blobs):
    job = submit(sessions, blobs, 1)
    for attempt in (1, 2, 3):
        (lease,) = claim(sessions, f"worker-{attempt}")
        assert lease.attempt == attempt
        expire_all(sessions)  # the scan killed its worker again
        sweep_once(sessions, blobs, Sent(), SETTINGS)
    with sessions() as session:
        (scan,) = session.get(Job, job).scans
        assert scan.status == ScanStatus.FAILED
        assert scan.error == "worker died while processing this scan (3 attempts)"
        assert summarise_job(session, job).status == "failed"
    assert claim(sessions, "worker-4") == []


def test_released_leases_wait_again_without_using_an_attempt(sessions, blobs):
    job = submit(sessions, blobs, 6)
    claim(sessions, "stopping")
    with sessions.begin() as session:
        assert release_leases(session, "stopping") == 4
    assert statuses(sessions, job).count("queued") == 6
    assert {lease.attempt for lease in claim(sessions, "next", limit=6)} == {1}


def test_cancel_stops_waiting_scans_and_keeps_finished_results(sessions, blobs):
    job = submit(sessions, blobs, 6)
    done = claim(sessions, "a", limit=2)
    write(sessions, done, "a")
    running = claim(sessions, "b", limit=2)
    with sessions.begin() as session:
        assert cancel_job(session, session.get(Job, job)) == 2
    with sessions.begin() as session:
        assert cancel_job(session, session.get(Job, job)) == 0  # idempotent
        assert summarise_job(session, job).status == "cancelling"
    assert claim(sessions, "c") == []  # cancelled scans never reach a model
    assert write(sessions, running, "b") == 2  # the batch in hand finishes
    with sessions() as session:
        summary = summarise_job(session, job)
        assert summary.status == "cancelled" and summary.finished_at is not None
        assert summary.counts.as_dict() == {
            "total": 6,
            "queued": 0,
            "running": 0,
            "succeeded": 4,
            "failed": 0,
            "cancelled": 2,
        }


def test_a_dead_workers_scan_of_a_cancelled_job_is_cancelled_not_requeued(sessions, blobs):
    job = submit(sessions, blobs, 1)
    claim(sessions, "dead")
    with sessions.begin() as session:
        cancel_job(session, session.get(Job, job))
    expire_all(sessions)
    assert sweep_once(sessions, blobs, Sent(), SETTINGS).cancelled == 1
    assert statuses(sessions, job) == ["cancelled"]


def test_cancelling_a_finished_job_changes_nothing(sessions, blobs):
    job = submit(sessions, blobs, 1)
    write(sessions, claim(sessions, "a"), "a")
    with sessions.begin() as session:
        assert cancel_job(session, session.get(Job, job)) == 0
        assert summarise_job(session, job).status == "succeeded"


def test_wakeups_wait_in_the_outbox_until_redis_takes_them(sessions, blobs):
    submit(sessions, blobs, 10, chunk=4)  # committed; "crashed" before sending anything
    with sessions() as session:
        assert pending_wakeups(session) == 1
    misconf = Sent(ResponseError("MISCONF Redis is configured to save RDB snapshots"))
    assert relay(sessions, misconf) == 0
    with sessions() as session:
        assert pending_wakeups(session) == 1
    redis_back = Sent()
    report = sweep_once(sessions, blobs, redis_back, SETTINGS, idle=False)
    assert report.wakeups_sent == redis_back.tasks == 3  # one per BATCH_SIZE scans
    with sessions() as session:
        assert pending_wakeups(session) == 0


def test_an_idle_sweep_wakes_workers_for_waiting_scans(sessions, blobs):
    submit(sessions, blobs, 1)
    relay(sessions, Sent())
    sent = Sent()
    sweep_once(sessions, blobs, sent, SETTINGS, idle=False)
    assert sent.tasks == 0  # someone is on it
    sweep_once(sessions, blobs, sent, SETTINGS, idle=True)
    assert sent.tasks == 1  # a wake-up lost with Redis costs one sweep interval


def test_retention_deletes_expired_jobs_their_blobs_and_orphan_blobs(sessions, blobs):
    expired = submit(sessions, blobs, 2, retention=3600)
    kept = submit(sessions, blobs, 2, retention=3600)
    forever = submit(sessions, blobs, 1, retention=0)
    blobs.put(blobs.key_for(expired, 0) + ".thumb.jpg", b"thumb")
    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == expired).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    orphan = new_id()  # a crash mid-upload: bytes stored, no row
    blobs.put(blobs.key_for(orphan, 0), b"x")
    report = sweep_once(sessions, blobs, Sent(), SETTINGS, orphan_grace=3600)
    assert report.jobs_deleted == 1 and report.orphans_deleted == 0  # too young to tell
    report = sweep_once(sessions, blobs, Sent(), SETTINGS, orphan_grace=0)
    assert report.orphans_deleted == 1
    assert sorted(p.name for p in blobs.root.iterdir()) == sorted([kept, forever])
    with sessions() as session:
        assert session.get(Job, expired) is None
        assert session.query(Scan).filter_by(job_id=expired).count() == 0
        assert session.get(Job, forever).expires_at is None


@pytest.mark.skipif(
    not POSTGRES_URL.startswith("postgres"),
    reason="SQLite serialises writers: only PostgreSQL deadlocks",
)
def test_a_delete_that_deadlocks_with_a_writer_is_run_again_and_deletes_the_job(
    sessions, blobs, caplog
):
    caplog.set_level("INFO", logger="db.session")
    job = submit(sessions, blobs, 3)
    with sessions() as session:
        first, *_, last = [scan.id for scan in session.get(Job, job).scans]
    writer = sessions()  # a writer locking the job's scans last one first
    writer.execute(update(Scan).where(Scan.id == last).values(worker="w@host"))
    failures = []

    def delete():
        try:
            delete_job(sessions, blobs, job)
        except Exception as exc:
            failures.append(exc)

    deleting = threading.Thread(target=delete)
    deleting.start()
    with sessions() as watcher:  # the delete holds the first scans and waits for the last
        deadline = time.monotonic() + 10
        while not watcher.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
            assert time.monotonic() < deadline, "the delete never waited for the writer"
            time.sleep(0.02)
    # The writer now wants the first scan: a deadlock. PostgreSQL aborts the delete, the
    # first to wait; it must run again once the writer commits, not fail.
    writer.execute(update(Scan).where(Scan.id == first).values(worker="w@host"))
    writer.commit()
    writer.close()
    deleting.join(30)
    assert not deleting.is_alive() and failures == []
    assert "SQLSTATE 40P01" in caplog.text
    with sessions() as session:
        assert session.get(Job, job) is None
        assert session.query(Scan).filter_by(job_id=job).count() == 0
    assert not (blobs.root / job).exists()


def test_covidscan_sweep_once_recovers_by_hand(sessions, blobs, database_url, redis_server):
    from click.testing import CliRunner

    from cli.main import main

    job = submit(sessions, blobs, 3)
    claim(sessions, "dead")
    expire_all(sessions)
    result = CliRunner().invoke(
        main,
        ["sweep", "--once"],
        env={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "BLOB_DIR": str(blobs.root),
            "MAX_ATTEMPTS": "3",
        },
    )
    assert result.exit_code == 0, result.output
    assert "requeued=3" in result.output and "wakeups_sent=2" in result.output
    assert statuses(sessions, job) == ["queued"] * 3
    with sessions() as session:
        assert pending_wakeups(session) == 0


def test_the_sweep_deletes_expired_browser_sessions(sessions, blobs):
    from datetime import timedelta

    from db.keys import create_key, open_session
    from db.models import WebSession, utcnow

    with sessions.begin() as session:
        key = create_key(session, "alice", "read").row
        session.flush()
        _, stale = open_session(session, key, hours=1)
        stale.expires_at = utcnow() - timedelta(minutes=1)
        _, live = open_session(session, key, hours=1)
        live_id = live.token_sha256
    sweep_once(sessions, blobs, Sent(), SETTINGS, clean_up=False)
    with sessions() as session:
        assert session.query(WebSession).count() == 2  # workers do not clean up
    sweep_once(sessions, blobs, Sent(), SETTINGS)
    with sessions() as session:
        assert [s.token_sha256 for s in session.query(WebSession)] == [live_id]

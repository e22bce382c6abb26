"""Storage Commitment reports applied to export rows (db/commitment.py), on the test's
database (SQLite, or PostgreSQL with DATABASE_URL)."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from covidscan.contract import ExportState
from db.commitment import failure_reason, record_commitment
from db.jobs import JobOptions, create_job
from db.models import Export, new_id
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.database


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def exports(sessions, transaction: str, states: list[str]) -> list[str]:
    """One export per state, asked under ``transaction``; their SOP Instance UIDs."""
    uids = []
    with sessions.begin() as session:
        job = create_job(session, [], new_id(), JobOptions(owner="radiology"))
        session.flush()
        for state in states:
            uid = generate_uid()
            session.add(
                Export(
                    job_id=job.id,
                    destination="pacs",
                    series_uid=generate_uid(),
                    results_series_uid=generate_uid(),
                    sop_instance_uid=uid,
                    state=state,
                    transaction_uid=transaction,
                )
            )
            uids.append(uid)
    return uids


def states(sessions, uids: list[str]) -> list[tuple[str, bool, str | None]]:
    with sessions() as session:
        rows = {e.sop_instance_uid: e for e in session.query(Export)}
        return [(rows[u].state, rows[u].committed_at is not None, rows[u].error) for u in uids]


def test_a_report_commits_and_fails_the_exports_it_names(sessions):
    transaction = generate_uid()
    kept, lost, unnamed = exports(sessions, transaction, ["stored"] * 3)
    with sessions.begin() as session:
        moved = record_commitment(session, transaction, [kept], {lost: failure_reason(0x0112)})
    assert moved == 2
    assert states(sessions, [kept, lost, unnamed]) == [
        ("committed", True, None),
        ("failed", False, "Storage Commitment failed: 0x0112 no such object instance"),
        ("stored", False, None),
    ]


def test_a_report_moves_only_stored_exports_of_its_own_transaction(sessions):
    mine, other = generate_uid(), generate_uid()
    pending, failed = exports(sessions, mine, [ExportState.PENDING, ExportState.FAILED])
    [foreign] = exports(sessions, other, ["stored"])
    with sessions.begin() as session:
        assert record_commitment(session, mine, [pending, failed, foreign], {}) == 0
        assert record_commitment(session, mine, [], {}) == 0
    assert [s[0] for s in states(sessions, [pending, failed, foreign])] == [
        "pending",
        "failed",
        "stored",
    ]


def test_a_report_sent_twice_changes_nothing_the_second_time(sessions):
    transaction = generate_uid()
    [uid] = exports(sessions, transaction, ["stored"])
    for expected in (1, 0):
        with sessions.begin() as session:
            assert record_commitment(session, transaction, [uid], {}) == expected
    assert states(sessions, [uid]) == [("committed", True, None)]


@pytest.mark.parametrize(
    "code, words",
    [
        (0x0110, "processing failure"),
        (0x0112, "no such object instance"),
        (0x0213, "resource limitation"),
        (0x0122, "referenced SOP Class not supported"),
        (0x0119, "class / instance conflict"),
        (0x0131, "duplicate transaction UID"),
        (0x0999, "unknown failure reason"),
    ],
)
def test_failure_reasons_are_said_in_words(code, words):
    assert failure_reason(code) == f"0x{code:04X} {words}"

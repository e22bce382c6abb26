"""A C-STORE job ends only when its series are complete: by count when the sender is a
registered PACS that answers C-FIND (a real Orthanc here), else once no instance came for
SERIES_STABLE_SECONDS (sealed by the sweep). Each association is one job with one audit row.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Optional

import pydicom
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from core.sweep import sweep_once
from core.wakeups import WakeupSender
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.destinations import add_destination
from db.models import AuditEvent, DestinationKind, Job, utcnow
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.pacs import Orthanc, require_orthanc

pytestmark = pytest.mark.integration

AE_TITLE, OWNER = "COVIDSCAN", "radiology"


@pytest.fixture
def sessions(app_config):
    engine = make_engine(app_config["DATABASE_URL"])
    yield make_session_factory(engine)
    engine.dispose()


def register(sessions, name: str, ae_title: str, port: int) -> None:
    with sessions.begin() as session:
        add_destination(
            session, name, DestinationKind.DICOM, ae_title=ae_title, host="127.0.0.1", port=port
        )


@contextmanager
def listening(config: dict[str, str], **options) -> Iterator[int]:
    """The listener, started in this process on a free port (yielded)."""
    from dicomnet.listener import start

    port = free_port()
    _server, stop = start(
        load_settings(config), "127.0.0.1", port, AE_TITLE, OWNER, ("CT",), **options
    )
    try:
        yield port
    finally:
        stop()


def jobs_of(sessions) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).order_by(Job.created_at)))


def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def series_answer(app_config, job_id: str) -> list[dict]:
    from api import create_app

    key = create_api_key(app_config["DATABASE_URL"], owner=OWNER)
    client = authorised(create_app(app_config).test_client(), key)
    response = client.get(f"/v1/jobs/{job_id}/series")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["series"]


def submit_audit(sessions) -> list[tuple[Optional[str], int]]:
    with sessions() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "job.submit").order_by(AuditEvent.id)
        )
        return [(r.detail.get("via"), r.detail["scans"]) for r in rows]


@pytest.fixture
def pacs_and_listener(tmp_path, app_config, sessions):
    """Orthanc registered as destination ``pacs`` (and ``archive`` beside it), and a listener
    that returns results to the sender and to ``archive``."""
    require_orthanc()
    port = free_port()
    with Orthanc(
        tmp_path / "orthanc", free_port(), free_port(), {"covidscan": (AE_TITLE, port)}
    ) as orthanc:
        register(sessions, "pacs", orthanc.ae_title, orthanc.dicom_port)
        register(sessions, "archive", "ARCHIVE", 1)
        from dicomnet.listener import start

        _server, stop = start(
            load_settings(app_config),
            "127.0.0.1",
            port,
            AE_TITLE,
            OWNER,
            ("CT",),
            export_to="archive",
            return_to_sender=True,
        )
        try:
            yield orthanc
        finally:
            stop()


def test_a_series_complete_by_the_senders_count_is_sealed_at_release(
    pacs_and_listener, sessions, app_config
):
    orthanc = pacs_and_listener
    files, ordered = d.ct_series(12, seed=3)
    instances = [orthanc.upload(body) for body in files]
    sent = orthanc.send("covidscan", [instances[0]["ParentSeries"]])
    assert sent.status_code == 200, sent.text
    [job] = wait_for(lambda: [j for j in jobs_of(sessions) if j.open_until is None])
    assert job.owner == OWNER
    assert job.export_to == ["archive", "pacs"]  # --export-to, then the sender
    series_uid = pydicom.dcmread(io.BytesIO(files[0])).SeriesInstanceUID
    assert job.series_expected == {series_uid: 12}
    [series] = series_answer(app_config, job.id)
    assert series["receiving"] is False and series["expected_slices"] == 12
    assert series["slice_count"] == 12
    assert submit_audit(sessions) == [("c-store", 12)]


def test_half_a_series_stays_open_though_the_sender_said_its_size(
    pacs_and_listener, sessions, app_config
):
    orthanc = pacs_and_listener
    files, _ = d.ct_series(8, seed=4)
    instances = [orthanc.upload(body) for body in files]
    sent = orthanc.send("covidscan", [i["ID"] for i in instances[:4]])
    assert sent.status_code == 200, sent.text
    [job] = wait_for(lambda: [j for j in jobs_of(sessions) if j.series_expected])
    assert job.open_until is not None  # 4 of 8: left to the timer
    [series] = series_answer(app_config, job.id)
    assert series["receiving"] is True and series["expected_slices"] == 8
    assert series["slice_count"] == 4


def c_store(port: int, instances: list[bytes], calling: str = "MODALITY") -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(b))).Status for b in instances]
    finally:
        assoc.release()


def sweep(config: dict[str, str]) -> int:
    """One sweep pass, as a worker runs it; how many open jobs it sealed."""
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    send = WakeupSender(settings.redis_url)
    try:
        blobs = open_blob_store(settings.blob_dir, settings.blob_store)
        return sweep_once(
            make_session_factory(engine), blobs, send, settings, clean_up=False
        ).jobs_sealed
    finally:
        send.close()
        engine.dispose()


def test_without_a_count_a_series_is_sealed_once_stable(app_config, sessions):
    config = {**app_config, "SERIES_STABLE_SECONDS": "2"}
    files, _ = d.ct_series(6, seed=5)
    with listening(config) as port:
        assert c_store(port, files[:3]) == [0] * 3
        [first] = wait_for(
            lambda: [
                j
                for j in jobs_of(sessions)
                if j.open_until and j.open_until < utcnow() + timedelta(seconds=5)
            ]
        )
        assert sweep(config) == 0  # released, but not yet stable
        [series] = series_answer(app_config, first.id)
        assert series["receiving"] is True and "expected_slices" not in series
        # The rest of the series in a second association: a job of its own.
        assert c_store(port, files[3:]) == [0] * 3
    time.sleep(2.2)
    assert sweep(config) == 2
    jobs = jobs_of(sessions)
    assert len(jobs) == 2 and all(j.open_until is None for j in jobs)
    assert all(s["receiving"] is False for j in jobs for s in series_answer(app_config, j.id))
    assert submit_audit(sessions) == [("c-store", 3), ("c-store", 3)]


def test_an_aborted_association_leaves_its_job_open_until_stable(app_config, sessions):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    config = {**app_config, "SERIES_STABLE_SECONDS": "2"}
    files, _ = d.ct_series(2, seed=6)
    with listening(config) as port:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(files[0]))).Status == 0
        assoc.abort()
        [job] = wait_for(
            lambda: [
                j
                for j in jobs_of(sessions)
                if j.open_until and j.open_until < utcnow() + timedelta(seconds=5)
            ]
        )
    time.sleep(2.2)
    assert sweep(config) == 1
    assert jobs_of(sessions)[0].open_until is None


def test_export_destinations_are_checked_when_the_listener_starts(
    app_config, sessions, monkeypatch
):
    from cli.main import main

    register(sessions, "pacs", "PACS", 104)
    for name, value in app_config.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        main, ["dicom-listen", "--owner", OWNER, "--export-to", "pacs,nowhere,elsewhere"]
    )
    assert result.exit_code == 2
    assert "--export-to" in result.output and "'nowhere', 'elsewhere'" in result.output


def test_export_to_puts_the_destinations_on_every_job(app_config, sessions):
    register(sessions, "pacs", "PACS", 104)
    register(sessions, "archive", "ARCHIVE", 104)
    files, _ = d.ct_series(2, seed=8)
    with listening(app_config, export_to="archive", return_to_sender=True) as port:
        assert c_store(port, files[:1], calling="PACS") == [0]
        assert c_store(port, files[1:], calling="STRANGER") == [0]
    assert [j.export_to for j in jobs_of(sessions)] == [["archive", "pacs"], ["archive"]]

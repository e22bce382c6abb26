"""Exports to PACS destinations: the status tables, the instance sent (its patient module put
back, dciodvfy-clean), and the queue (made with the job's end, claimed, retried within a
short window, dead-lettered, failed when its destination is removed, deleted with its job).

The destinations' answers here are a stand-in ``Send``; tests/test_exports_pacs.py sends to
a real Orthanc and to refusing pynetdicom SCPs."""

from __future__ import annotations

import base64
import io
import secrets
import time
import uuid

import pydicom
import pytest
from sqlalchemy import select

from api import create_app
from core.destinations import dicom_spec, register
from core.exports import FAILED, RETRY, STORED, Delivery, export_due
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.models import Export
from db.session import make_engine, make_session_factory
from dicomnet.exporter import store_outcome, stow_outcome
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.dicom_validators import iod_errors


@pytest.mark.parametrize(
    "code, outcome",
    [
        (0x0000, STORED),
        (0xB000, STORED),
        (0xB006, STORED),
        (0xB007, STORED),
        (0xA700, RETRY),
        (0xA7FF, RETRY),
        (0x0110, RETRY),
        (0x0122, FAILED),
        (0x0124, FAILED),
        (0xA900, FAILED),
        (0xC000, FAILED),
        (0xCFFF, FAILED),
    ],
)
def test_a_c_store_status_decides_stored_retry_or_failed(code, outcome):
    assert store_outcome(code) == outcome


@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, STORED),
        (429, RETRY),
        (500, RETRY),
        (503, RETRY),
        (400, FAILED),
        (401, FAILED),
        (403, FAILED),
        (404, FAILED),
        (409, FAILED),
        (413, FAILED),
        (415, FAILED),
    ],
)
def test_a_stow_rs_status_decides_stored_retry_or_failed(status, outcome):
    assert stow_outcome(status) == outcome


# The queue, with a stand-in for the destination


def counted(outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("covidscan_exports_total", {"outcome": outcome}) or 0.0


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Answers:
    """A destination stand-in: answers each attempt with the next Delivery (the last one
    again once they run out) and keeps the instances it was sent."""

    def __init__(self, *answers: Delivery) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[str, bytes, str]] = []

    def __call__(self, target, instance, export):
        self.sent.append((target.name, instance, export.id))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def config(app_config):
    return {
        **app_config,
        "PHI_KEY": new_key(),
        "EXPORT_RETRY_WINDOW": "3",
        "EXPORT_RETRY_BASE_MS": "300",
    }


@pytest.fixture
def runtime(config):
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    yield settings, factory, open_blob_store(settings.blob_dir, settings.blob_store)
    engine.dispose()


def add_destinations(factory, *names: str) -> None:
    with factory.begin() as session:
        for name in names:
            register(session, dicom_spec(name, "PACS", "127.0.0.1", 104, commitment=False), None)


def submit_and_finish(
    config, factory, export_to: str, count: int = 3, explain: bool = False
) -> str:
    """A DICOM job sent through the API with ``export_to``, every slice classified as a
    worker would, and its end recorded as the worker's last write does."""
    from core.jobs.ending import commit_ending
    from tests.test_patient_data import classify_all

    key = create_api_key(config["DATABASE_URL"], owner=f"exp-{uuid.uuid4().hex[:8]}")
    client = authorised(create_app(config).test_client(), key)
    files, _ = d.ct_series(count, seed=3)
    data = {
        "files": [(io.BytesIO(body), f"IM{i}") for i, body in enumerate(files)],
        "export_to": export_to,
        **({"explain": "gradcam"} if explain else {}),
    }
    answer = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert answer.status_code == 202, answer.get_json()
    job_id = answer.get_json()["id"]
    classify_all(config["DATABASE_URL"])
    with factory() as session:
        finished = commit_ending(session, [job_id], factory, None)
    assert job_id in finished.statuses
    return job_id


def exports_of(factory, job_id: str) -> list[Export]:
    with factory() as session:
        rows = list(session.scalars(select(Export).where(Export.job_id == job_id)))
        session.expunge_all()
        return rows


@pytest.mark.integration
def test_the_instance_sent_is_filed_under_the_patient_and_valid(config, runtime):
    settings, factory, blobs = runtime
    add_destinations(factory, "pacs-a", "pacs-b")
    job_id = submit_and_finish(config, factory, "pacs-a,pacs-b")
    rows = exports_of(factory, job_id)
    assert sorted(r.destination for r in rows) == ["pacs-a", "pacs-b"]
    assert len({r.results_series_uid for r in rows}) == 1  # one results series per series
    assert len({r.sop_instance_uid for r in rows}) == 2
    assert all(r.state == "pending" and r.attempts == 0 for r in rows)
    send = Answers(Delivery(STORED, "C-STORE to PACS@127.0.0.1:104 stored (0x0000)"))
    assert export_due(factory, blobs, settings, send) == {r.id: STORED for r in rows}
    by_id = {r.id: r for r in rows}
    for _name, instance, export_id in send.sent:
        dataset = pydicom.dcmread(io.BytesIO(instance))
        assert dataset.SOPInstanceUID == by_id[export_id].sop_instance_uid
        assert dataset.SeriesInstanceUID == by_id[export_id].results_series_uid
        assert dataset.StudyInstanceUID == by_id[export_id].study_uid
        assert str(dataset.PatientName) == d.PATIENT_NAME
        assert dataset.PatientID == d.PATIENT_ID
        assert dataset.AccessionNumber == d.ACCESSION
        assert dataset.PatientBirthDate == d.BIRTH_DATE
        assert "PatientIdentityRemoved" not in dataset
        assert "DeidentificationMethodCodeSequence" not in dataset
        assert iod_errors(instance) == []
    stored = exports_of(factory, job_id)
    assert all(r.state == "stored" and r.attempts == 1 and r.stored_at for r in stored)
    assert export_due(factory, blobs, settings, send) == {}  # nothing due twice


@pytest.mark.integration
def test_a_busy_destination_is_retried_in_its_window_then_failed_with_its_reason(config, runtime):
    settings, factory, blobs = runtime
    add_destinations(factory, "busy", "refuses")
    job_id = submit_and_finish(config, factory, "busy,refuses")
    busy = Delivery(RETRY, "C-STORE refused by PACS@127.0.0.1:104: 0xA700 out of resources")
    refused = Delivery(FAILED, "C-STORE refused by PACS@127.0.0.1:104: 0x0122 SOP class")

    def send(target, instance, export):
        return busy if target.name == "busy" else refused

    before = {outcome: counted(outcome) for outcome in (RETRY, FAILED)}
    started, outcomes = time.monotonic(), []
    while time.monotonic() - started < 15:
        outcomes += export_due(factory, blobs, settings, send).values()
        if all(r.state != "pending" for r in exports_of(factory, job_id)):
            break
        time.sleep(0.1)
    rows = {r.destination: r for r in exports_of(factory, job_id)}
    assert rows["refuses"].state == "failed" and rows["refuses"].attempts == 1
    assert "0x0122" in rows["refuses"].error
    assert rows["busy"].state == "failed"
    assert "retries ran out" in rows["busy"].error and "0xA700" in rows["busy"].error
    # 0.3 s doubling within 3 s: a handful of attempts, not a flood
    assert 3 <= rows["busy"].attempts <= 6, rows["busy"].attempts
    assert outcomes.count(RETRY) == rows["busy"].attempts - 1
    # covidscan_exports_total counts each outcome recorded
    assert counted(RETRY) - before[RETRY] == rows["busy"].attempts - 1
    assert counted(FAILED) - before[FAILED] == 2


@pytest.mark.integration
def test_without_phi_key_at_intake_the_export_fails_saying_why(config, runtime):
    settings, factory, blobs = runtime
    add_destinations(factory, "pacs")
    job_id = submit_and_finish({**config, "PHI_KEY": ""}, factory, "pacs")
    send = Answers(Delivery(STORED, "stored"))
    export_due(factory, blobs, settings, send)
    [row] = exports_of(factory, job_id)
    assert row.state == "failed" and not send.sent
    assert "no patient attributes were kept" in row.error and "PHI_KEY" in row.error


@pytest.mark.integration
def test_the_exports_api_removal_of_a_destination_and_deletion_of_the_job(config, runtime):
    settings, factory, blobs = runtime
    add_destinations(factory, "kept", "removed")
    key = create_api_key(config["DATABASE_URL"], owner="reader")
    job_id = submit_and_finish(config, factory, "kept,removed")
    admin = authorised(
        create_app(config).test_client(), create_api_key(config["DATABASE_URL"], "ops", "admin")
    )
    assert admin.delete("/v1/destinations/removed").status_code == 204
    with factory() as session:
        from db.models import Job

        owner = session.get(Job, job_id).owner
    owner_client = authorised(
        create_app(config).test_client(), create_api_key(config["DATABASE_URL"], owner)
    )
    listed = owner_client.get(f"/v1/jobs/{job_id}/exports")
    assert listed.status_code == 200
    from api.schemas import ExportList

    body = ExportList.model_validate(listed.get_json())
    states = {e.destination: (e.state, e.error) for e in body.exports}
    assert states == {
        "kept": ("pending", None),
        "removed": ("failed", "destination removed was removed"),
    }
    assert d.PATIENT_ID not in listed.get_data(as_text=True)
    stranger = authorised(create_app(config).test_client(), key)
    assert stranger.get(f"/v1/jobs/{job_id}/exports").status_code == 404
    assert owner_client.delete(f"/v1/jobs/{job_id}").status_code in (200, 202, 204)
    assert exports_of(factory, job_id) == []


@pytest.mark.integration
def test_the_cli_sends_due_exports_and_lists_them(config, runtime):
    """``covidscan exports send-due`` is the gateway's pass, by hand: a destination where
    nothing listens is tried again later, saying so; ``list`` shows it."""
    import socket

    from click.testing import CliRunner

    from cli.main import main

    settings, factory, blobs = runtime
    with socket.socket() as holder:  # a port nothing listens on, held so nothing takes it
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with factory.begin() as session:
            register(session, dicom_spec("closed", "PACS", "127.0.0.1", port), None)
        job_id = submit_and_finish(config, factory, "closed")
        env = {**config, "MODEL_PATH": ""}
        sent = CliRunner().invoke(main, ["exports", "send-due"], env=env, catch_exceptions=False)
    assert sent.exit_code == 0, sent.output
    [row] = exports_of(factory, job_id)
    assert f"{row.id} retry" in sent.output and "1 export(s) attempted" in sent.output
    listed = CliRunner().invoke(main, ["exports", "list", job_id], env=env)
    assert listed.exit_code == 0, listed.output
    assert "closed  sr" in listed.output and "pending  attempts: 1" in listed.output
    assert f"connection refused by 127.0.0.1:{port}" in listed.output


@pytest.mark.integration
def test_a_job_that_asked_for_grad_cam_sends_its_overlay_once_it_is_made(config, runtime):
    """The overlay waits (retried, nothing sent) while the explanations are made, then goes
    as a Secondary Capture of its own series, filed under the patient, dciodvfy-clean."""
    import numpy as np

    from db.models import Explanation, ScanStatus, utcnow
    from tests.test_dicom_overlay import png_of

    settings, factory, blobs = runtime
    add_destinations(factory, "pacs")
    job_id = submit_and_finish(config, factory, "pacs", explain=True)
    rows = {r.kind: r for r in exports_of(factory, job_id)}
    assert set(rows) == {"sr", "overlay"}
    assert rows["sr"].results_series_uid != rows["overlay"].results_series_uid
    send = Answers(Delivery(STORED, "stored (0x0000)"))
    outcomes = export_due(factory, blobs, settings, send)
    assert outcomes == {rows["sr"].id: STORED, rows["overlay"].id: RETRY}
    [waiting] = [r for r in exports_of(factory, job_id) if r.kind == "overlay"]
    assert "not made yet" in waiting.error and waiting.state == "pending"
    with factory.begin() as session:  # what the worker writes once it explained the slices
        for explanation in session.query(Explanation).filter(Explanation.job_id == job_id):
            explanation.status = ScanStatus.SUCCEEDED
            explanation.finished_at = utcnow()
            explanation.overlay_png = png_of(np.full((8, 8, 3), 120, dtype=np.uint8))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(send.sent) < 2:
        export_due(factory, blobs, settings, send)
        time.sleep(0.1)
    [(_name, instance, export_id)] = send.sent[1:]
    assert export_id == rows["overlay"].id
    dataset = pydicom.dcmread(io.BytesIO(instance))
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    assert dataset.SOPInstanceUID == rows["overlay"].sop_instance_uid
    assert dataset.SeriesInstanceUID == rows["overlay"].results_series_uid
    assert dataset.PatientID == d.PATIENT_ID and "PatientIdentityRemoved" not in dataset
    assert iod_errors(instance) == []
    assert {r.kind: r.state for r in exports_of(factory, job_id)} == {
        "sr": "stored",
        "overlay": "stored",
    }


@pytest.mark.integration
def test_a_commitment_report_that_comes_before_the_c_store_is_recorded_commits_it(config, runtime):
    """Orthanc may send its N-EVENT-REPORT while the C-STORE's association is still open:
    the transaction is in the row before the N-ACTION goes, so the report finds it."""
    from db.commitment import record_commitment

    settings, factory, blobs = runtime
    with factory.begin() as session:
        register(session, dicom_spec("committing", "PACS", "127.0.0.1", 104), None)
    job_id = submit_and_finish(config, factory, "committing")

    def send(target, instance, export):
        assert export.transaction_uid  # kept before the request is made
        with factory.begin() as session:  # the report, on the listener's association
            moved = record_commitment(
                session, export.transaction_uid, [export.sop_instance_uid], {}
            )
        assert moved == 1
        return Delivery(STORED, "stored; requested", transaction_uid=export.transaction_uid)

    [outcome] = export_due(factory, blobs, settings, send).values()
    assert outcome == STORED
    [row] = exports_of(factory, job_id)
    assert row.state == "committed" and row.stored_at and row.committed_at
    assert row.lease_expires_at is None and row.next_attempt_at is None


# The senders against small real servers: what each answer comes to


def a_target(**fields):
    from core.exports import Target

    values = dict(
        name="t",
        kind="dicomweb",
        ae_title=None,
        host=None,
        port=None,
        tls=False,
        commitment=False,
        url=None,
        credentials=None,
    )
    values.update(fields)
    return Target(**values)


@pytest.fixture
def stow_service():
    """A STOW-RS stand-in answering each POST with the next (status, headers, body) queued,
    and keeping what it was sent."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answers: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, dict(self.headers), body))
            status, headers, payload = answers.pop(0)
            self.send_response(status)
            for key, value in {"Content-Type": "application/dicom+json", **headers}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web", answers, seen
    finally:
        server.shutdown()


def failed_sop(reason: int) -> bytes:
    import json

    item = {"00081197": {"vr": "US", "Value": [reason]}}
    return json.dumps({"00081198": {"vr": "SQ", "Value": [item]}}).encode()


def test_stow_rs_answers_decide_stored_retry_or_failed_with_the_reason(stow_service):
    from core.destinations import Credentials
    from dicomnet.exporter import stow

    url, answers, seen = stow_service
    target = a_target(url=url, credentials=Credentials(token="tok-123"))
    answers += [
        (200, {}, b"{}"),
        (202, {}, failed_sop(0xA900)),
        (409, {}, failed_sop(0x0122)),
        (429, {"Retry-After": "120"}, b""),
        (503, {}, b""),
        (401, {}, b""),
    ]
    got = [stow(target, b"DICM-instance", timeout=5) for _ in range(6)]
    assert [d.outcome for d in got] == [STORED, FAILED, FAILED, RETRY, RETRY, FAILED]
    assert "0xA900 Data Set Does Not Match SOP Class" in got[1].detail
    assert "HTTP 409" in got[2].detail and "0x0122" in got[2].detail
    assert got[3].retry_after == 120
    path, headers, body = seen[0]
    assert path == "/dicom-web/studies" and headers["Authorization"] == "Bearer tok-123"
    assert 'type="application/dicom"' in headers["Content-Type"] and b"DICM-instance" in body


def test_a_permanent_association_rejection_fails_at_once_naming_the_reason():
    from pynetdicom import AE

    from devtools.embedded_redis import free_port
    from dicomnet.exporter import c_store

    ae = AE(ae_title="STRICT")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34")
    ae.require_called_aet = True
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        target = a_target(kind="dicom", ae_title="NOT_STRICT", host="127.0.0.1", port=port)
        files, _ = d.ct_series(1)
        delivery = c_store(target, files[0], timeout=5)
    finally:
        server.shutdown()
    assert delivery.outcome == FAILED, delivery
    assert "association rejected by NOT_STRICT@127.0.0.1" in delivery.detail
    assert "Called AE title not recognised" in delivery.detail


@pytest.mark.integration
def test_a_commitment_report_that_never_comes_is_said_and_a_late_one_still_commits(config, runtime):
    from datetime import timedelta

    from db.commitment import record_commitment
    from db.exports import note_missing_commitments
    from db.models import utcnow

    settings, factory, blobs = runtime
    with factory.begin() as session:
        register(session, dicom_spec("silent", "PACS", "127.0.0.1", 104), None)
    job_id = submit_and_finish(config, factory, "silent")

    def send(target, instance, export):
        return Delivery(STORED, "stored; requested", transaction_uid=export.transaction_uid)

    export_due(factory, blobs, settings, send)
    [row] = exports_of(factory, job_id)
    assert row.state == "stored" and row.transaction_uid and row.finished_at is None
    with factory.begin() as session:
        assert note_missing_commitments(session, 3600) == 0  # not yet overdue
        later = utcnow() + timedelta(seconds=3601)
        assert note_missing_commitments(session, 3600, now=later) == 1
        assert note_missing_commitments(session, 3600, now=later) == 0  # said once
    [row] = exports_of(factory, job_id)
    assert row.state == "stored"
    assert row.error == "no Storage Commitment report within 3600 s of the C-STORE"
    with factory.begin() as session:
        assert record_commitment(session, row.transaction_uid, [row.sop_instance_uid], {}) == 1
    [row] = exports_of(factory, job_id)
    assert row.state == "committed" and row.error is None


def test_a_pacs_without_storage_commitment_stores_and_says_why_it_is_not_committed():
    from pynetdicom import AE, evt

    from devtools.embedded_redis import free_port
    from dicomnet.exporter import c_store
    from tests.dicom_files import structured_report

    received = []
    ae = AE(ae_title="NOCOMMIT")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR: no commitment
    port = free_port()
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.request) or 0x0000)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        target = a_target(
            kind="dicom", ae_title="NOCOMMIT", host="127.0.0.1", port=port, commitment=True
        )
        delivery = c_store(target, structured_report(), timeout=5, transaction_uid="2.25.1")
    finally:
        server.shutdown()
    assert delivery.outcome == STORED and len(received) == 1, delivery
    assert delivery.transaction_uid is None
    assert delivery.note == (
        f"stored, not committed: NOCOMMIT@127.0.0.1:{port} does not offer Storage "
        "Commitment (Push Model)"
    )


@pytest.mark.integration
def test_a_series_without_a_result_makes_no_export_and_the_log_says_why(config, runtime, caplog):
    settings, factory, blobs = runtime
    add_destinations(factory, "pacs")
    caplog.set_level("INFO", logger="db.exports")
    job_id = submit_and_finish({**config, "MIN_SERIES_SLICES": "5"}, factory, "pacs", count=3)
    assert exports_of(factory, job_id) == []
    [line] = [r.getMessage() for r in caplog.records if r.name == "db.exports"]
    assert line.startswith(f"job {job_id}: series ") and "nothing exported" in line
    assert "fewer than the 5 a series result needs" in line
    assert d.PATIENT_ID not in line

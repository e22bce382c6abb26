"""Every way in keeps the same rules: one multipart request, parts of an open job, the
two-step direct upload (a real S3 server), STOW-RS, C-STORE (a real pynetdicom SCU
against the listener, run in a thread) and a retrieval from a real PACS (Orthanc, by the
listener's retriever). For each: two scans are accepted with the same
audit row and the same metric delta; with SCANS_PER_HOUR=2 the next two are refused the
same way (429 or 0xA700) and leave no scan, no file, no audit row and no count behind."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import pydicom
import pytest
import requests
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import select

from api import create_app
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.models import AuditEvent, Job, Scan
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from devtools.scrape import parse, value
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.integration

PATHS = ("multipart", "parts", "direct", "stow-rs", "c-store", "retrieval")
SUBMISSION = ("job.submit", "job.add_scans")
AE_TITLE = "COVIDSCAN"


@dataclass
class Stack:
    config: dict[str, str]
    owner: str
    client: object
    exits: contextlib.ExitStack
    open_job: Optional[str] = None
    listener_port: Optional[int] = None
    pacs: Optional[Any] = None
    sent: int = field(default=0)

    def next_seed(self) -> int:
        self.sent += 1
        return self.sent * 10


@pytest.fixture
def stack(app_config, s3_server):
    config = {
        **app_config,
        **s3_server.env(prefix=f"entry-{uuid.uuid4().hex[:8]}"),
        "SCANS_PER_HOUR": "2",
    }
    owner = f"entry-{uuid.uuid4().hex[:8]}"
    client = authorised(
        create_app(config).test_client(), create_api_key(config["DATABASE_URL"], owner=owner)
    )
    with contextlib.ExitStack() as exits:
        yield Stack(config, owner, client, exits)


def _refused_by_quota(response) -> bool:
    """True for the quota's 429; any answer but success or that fails the test."""
    if response.status_code in (200, 201, 202):
        return False
    problem = response.get_json()
    assert response.status_code == 429, problem
    assert "SCANS_PER_HOUR" in problem["detail"] and int(response.headers["Retry-After"]) >= 1
    return True


def _pngs(stack: Stack, count: int) -> list[tuple[str, bytes]]:
    seed = stack.next_seed()
    return [(f"s{seed + i}.png", png_bytes(32, seed=seed + i)) for i in range(count)]


def _form(items) -> dict:
    return {"files": [(io.BytesIO(data), name) for name, data in items]}


def send_multipart(stack: Stack, count: int) -> bool:
    response = stack.client.post(
        "/v1/jobs", data=_form(_pngs(stack, count)), content_type="multipart/form-data"
    )
    return not _refused_by_quota(response)


def send_part(stack: Stack, count: int) -> bool:
    if stack.open_job is None:
        opened = stack.client.post(
            "/v1/jobs", data={"open": "true"}, content_type="multipart/form-data"
        )
        assert opened.status_code == 202, opened.get_json()
        stack.open_job = opened.get_json()["id"]
    response = stack.client.post(
        f"/v1/jobs/{stack.open_job}/scans",
        data=_form(_pngs(stack, count)),
        content_type="multipart/form-data",
    )
    return not _refused_by_quota(response)


def send_direct(stack: Stack, count: int) -> bool:
    items = _pngs(stack, count)
    created = stack.client.post(
        "/v1/jobs", json={"files": [{"filename": name, "size": len(data)} for name, data in items]}
    )
    if _refused_by_quota(created):
        return False
    for part, (_name, data) in zip(created.get_json()["parts"], items):
        assert (
            requests.put(part["url"], data=data, headers=part["headers"], timeout=10).status_code
            == 200
        )
    return not _refused_by_quota(stack.client.post(created.get_json()["start_url"]))


def _ct_instances(stack: Stack, count: int) -> list[bytes]:
    files, _ = d.ct_series(count, seed=stack.next_seed())
    return files


def send_stow(stack: Stack, count: int) -> bool:
    boundary = b"EntryPaths"
    head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    body = b"".join(head + part + b"\r\n" for part in _ct_instances(stack, count))
    body += b"--" + boundary + b"--\r\n"
    response = stack.client.post(
        "/v1/dicomweb/studies",
        data=body,
        content_type='multipart/related; type="application/dicom"; boundary=EntryPaths',
    )
    return not _refused_by_quota(response)


def start_listener(stack: Stack, config: dict[str, str]) -> int:
    from dicomnet.listener import start

    port = free_port()
    _server, stop = start(load_settings(config), "127.0.0.1", port, AE_TITLE, stack.owner, ("CT",))
    stack.exits.callback(stop)
    return port


def c_store(port: int, instances: list[bytes], calling: str = "PACS") -> Optional[list[int]]:
    """The C-STORE statuses of one association sending ``instances``; None if rejected."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return None
    try:
        return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(body))).Status for body in instances]
    finally:
        assoc.release()


def send_c_store(stack: Stack, count: int) -> bool:
    if stack.listener_port is None:
        stack.listener_port = start_listener(stack, stack.config)
    statuses = c_store(stack.listener_port, _ct_instances(stack, count))
    assert statuses is not None, "the association was rejected"
    if set(statuses) == {0x0000}:
        return True
    assert set(statuses) == {0xA700}, [hex(s) for s in statuses]  # out of resources: quota
    return False


def send_retrieval(stack: Stack, count: int) -> bool:
    """A study of ``count`` CT slices stored in Orthanc, asked for by its study UID and
    retrieved by the listener's retriever."""
    import tempfile
    import time
    from pathlib import Path

    from core.destinations import dicom_spec, register
    from tests.pacs import Orthanc, require_orthanc

    if stack.pacs is None:
        require_orthanc()
        folder = Path(stack.exits.enter_context(tempfile.TemporaryDirectory()))
        modalities = {"covidscan": (AE_TITLE, free_port())}  # the PACS knows who asks
        stack.pacs = stack.exits.enter_context(
            Orthanc(folder, free_port(), free_port(), modalities)
        )
        engine = make_engine(stack.config["DATABASE_URL"])
        with make_session_factory(engine).begin() as session:
            spec = dicom_spec("pacs", "ORTHANC", "127.0.0.1", stack.pacs.dicom_port)
            register(session, spec, None)
        engine.dispose()
        start_listener(stack, stack.config)
    files = _ct_instances(stack, count)
    study_uid = str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID)
    for body in files:
        stack.pacs.upload(body)
    posted = stack.client.post("/v1/retrievals", json={"source": "pacs", "study_uids": [study_uid]})
    assert posted.status_code == 202, posted.get_json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = stack.client.get(posted.headers["Location"]).get_json()
        if shown["status"] == "done":
            [item] = shown["items"]
            if item["outcome"] == "retrieved":
                return True
            assert item["outcome"] == "refused" and "SCANS_PER_HOUR" in item["reason"], str(item)
            return False
        time.sleep(0.2)
    raise AssertionError(f"the retrieval did not end: {shown}")


SENDERS: dict[str, Callable[[Stack, int], bool]] = {
    "multipart": send_multipart,
    "parts": send_part,
    "direct": send_direct,
    "stow-rs": send_stow,
    "c-store": send_c_store,
    "retrieval": send_retrieval,
}


@dataclass(frozen=True)
class Seen:
    """What one owner's submissions left: scans, files, audit rows, metric values."""

    scans: int
    files: int
    audit: list[tuple[str, int, Optional[str]]]
    jobs_submitted: float
    scans_submitted: float


def seen(stack: Stack) -> Seen:
    engine = make_engine(stack.config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            scans = len(
                session.scalars(
                    select(Scan.id).join(Job, Job.id == Scan.job_id).where(Job.owner == stack.owner)
                ).all()
            )
            rows = session.scalars(
                select(AuditEvent)
                .where(AuditEvent.owner == stack.owner, AuditEvent.action.in_(SUBMISSION))
                .order_by(AuditEvent.id)
            ).all()
            audit = [
                (r.action, r.detail["scans"], r.detail.get("via"))
                for r in rows
                if r.detail["scans"]
            ]
    finally:
        engine.dispose()
    settings = load_settings(stack.config)
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)
    files = sum(len(blobs.keys(job_id)) for job_id in blobs.job_ids_older_than(-60))
    samples = parse(generate_latest(REGISTRY).decode())
    return Seen(
        scans,
        files,
        audit,
        value(samples, "covidscan_jobs_submitted_total", priority="normal"),
        value(samples, "covidscan_scans_submitted_total", priority="normal"),
    )


EXPECTED_AUDIT = {
    "multipart": ("job.submit", "multipart"),
    "parts": ("job.add_scans", "parts"),
    "direct": ("job.submit", "direct"),
    "stow-rs": ("job.submit", "stow-rs"),
    "c-store": ("job.submit", "c-store"),
    "retrieval": ("job.submit", "retrieval"),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_entry_path_charges_the_quota_writes_the_audit_row_and_counts(stack, path):
    send = SENDERS[path]
    before = seen(stack)
    assert before.scans == before.files == 0 and before.audit == []

    assert send(stack, 2), f"{path}: two scans within SCANS_PER_HOUR=2 were refused"
    accepted = seen(stack)
    action, via = EXPECTED_AUDIT[path]
    assert accepted.scans == 2 and accepted.files == 2
    assert accepted.audit == [(action, 2, via)]
    assert accepted.jobs_submitted - before.jobs_submitted == 1
    assert accepted.scans_submitted - before.scans_submitted == 2

    assert not send(stack, 2), f"{path}: scans past SCANS_PER_HOUR were accepted"
    assert seen(stack) == accepted  # nothing stored, recorded or counted


def test_c_store_refuses_callers_not_allowed_at_association(stack):
    port = start_listener(stack, {**stack.config, "DICOM_ALLOWED_AE_TITLES": "PACS1, CT_ROOM"})
    instances = _ct_instances(stack, 1)
    assert c_store(port, instances, calling="INTRUDER") is None
    assert seen(stack).scans == 0
    assert c_store(port, instances, calling="CT_ROOM") == [0x0000]
    assert seen(stack).scans == 1


def test_a_quota_refusal_over_c_store_is_logged_without_patient_data(stack, caplog):
    stack.config["SCANS_PER_HOUR"] = "1"
    port = start_listener(stack, stack.config)
    instances = _ct_instances(stack, 2)
    with caplog.at_level("WARNING", logger="dicomnet"):
        assert c_store(port, instances) == [0x0000, 0xA700]
    [line] = [r.getMessage() for r in caplog.records if "SCANS_PER_HOUR" in r.getMessage()]
    assert stack.owner in line and "refused" in line
    dataset = pydicom.dcmread(io.BytesIO(instances[1]))
    for attribute in ("PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID"):
        if attribute in dataset:
            assert str(dataset.data_element(attribute).value) not in line

"""A series classified by a real worker goes back into a real PACS (Orthanc 1.10): by C-STORE
and by STOW-RS, as an SR in the same study under the same patient; PACSs that refuse
(pynetdicom SCPs answering 0xA700 forever, and 0x0122) are retried a few times then
failed with their reason, or failed at once."""

from __future__ import annotations

import base64
import io
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import pydicom
import pytest
import requests

from api import create_app
from core.destinations import dicom_spec, dicomweb_spec, register
from covidscan.settings import load_settings
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from tests import dicom_files as d
from tests.conftest import authorised, wait_for_job
from tests.dicom_validators import iod_errors
from tests.pacs import Orthanc, require_orthanc

pytestmark = pytest.mark.integration

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


class RefusingPacs:
    """A pynetdicom Storage SCP that answers every C-STORE with ``status``."""

    def __init__(self, status: int) -> None:
        self.status, self.port, self.received = status, free_port(), 0

    def __enter__(self) -> RefusingPacs:
        from pynetdicom import AE, evt

        def on_store(event) -> int:
            self.received += 1
            return self.status

        ae = AE(ae_title="REFUSING")
        ae.add_supported_context(COMPREHENSIVE_3D_SR)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path, gateway_port) -> Iterator[Orthanc]:
    require_orthanc()
    # Orthanc takes a Storage Commitment request only from a modality it knows, and sends
    # its report there: to covidscan's gateway
    known = {"covidscan": ("COVIDSCAN", gateway_port)}
    with Orthanc(tmp_path / "orthanc", free_port(), free_port(), known) as pacs:
        yield pacs


@pytest.fixture
def config(stack_config) -> dict[str, str]:
    return {
        **stack_config,
        "PHI_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "EXPORT_RETRY_WINDOW": "5",
        "EXPORT_RETRY_BASE_MS": "300",
        "EXPORT_TIMEOUT": "10",
    }


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_a_classified_series_comes_back_into_the_pacs_in_its_study(
    orthanc, config, stack_key, worker, gateway_port
):
    """Sent by the gateway (``covidscan dicom-listen``'s exporter), committed by Orthanc's
    Storage Commitment report to the same gateway."""
    from dicomnet.listener import start

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    tag = uuid.uuid4().hex[:6]
    names = {k: f"{k}-{tag}" for k in ("dicom", "web", "busy", "refuses")}
    files, ordered = d.ct_series(4, seed=11)
    for body in files:  # the PACS holds the study, as it would before sending it to us
        orthanc.upload(body)
    study_uid = pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID
    with RefusingPacs(0xA700) as busy, RefusingPacs(0x0122) as refuses:
        with factory.begin() as session:
            register(
                session,
                dicom_spec(names["dicom"], "ORTHANC", "127.0.0.1", orthanc.dicom_port),
                None,
            )
            register(session, dicomweb_spec(names["web"], f"{orthanc.url}/dicom-web"), None)
            for name, pacs in ((names["busy"], busy), (names["refuses"], refuses)):
                spec = dicom_spec(name, "REFUSING", "127.0.0.1", pacs.port, commitment=False)
                register(session, spec, None)
        client = authorised(create_app(config).test_client(), stack_key)
        _server, stop = start(
            settings, "127.0.0.1", gateway_port, "COVIDSCAN", "radiology", ("CT",)
        )
        answer = client.post(
            "/v1/jobs",
            data={
                "files": [(io.BytesIO(b), f"IM{i}") for i, b in enumerate(files)],
                "export_to": ",".join(names.values()),
            },
            content_type="multipart/form-data",
        )
        assert answer.status_code == 202, answer.get_json()
        job_id = answer.get_json()["id"]
        try:
            job = wait_for_job(client, job_id)
            assert job["status"] == "succeeded", job
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                exports = client.get(f"/v1/jobs/{job_id}/exports").get_json()["exports"]
                states = {e["destination"]: e["state"] for e in exports}
                if "pending" not in states.values() and states[names["dicom"]] != "stored":
                    break
                time.sleep(0.2)
        finally:
            stop()
    with factory() as session:
        from db.models import Export

        transactions = {
            row.destination: row.transaction_uid
            for row in session.query(Export).filter(Export.job_id == job_id)
        }
    engine.dispose()
    # Orthanc offers Storage Commitment: the request made after the C-STORE waits for its report
    assert transactions[names["dicom"]] is not None
    assert transactions[names["web"]] is None
    by_name = {e["destination"]: e for e in exports}
    assert set(by_name) == set(names.values())
    assert by_name[names["dicom"]]["state"] == "committed", orthanc.log_path.read_text()[-2000:]
    assert by_name[names["web"]]["state"] == "stored"  # STOW-RS has no commitment
    for kind in ("dicom", "web"):
        export = by_name[names[kind]]
        assert export["attempts"] == 1 and export["stored_at"] and export["error"] is None
        assert export["series_uid"] in {
            pydicom.dcmread(io.BytesIO(b)).SeriesInstanceUID for b in files
        }
    # the SR is in the study of its images, under their patient: one study, one patient
    assert len(orthanc.get("/studies")) == 1 and len(orthanc.get("/patients")) == 1
    found = requests.get(
        f"{orthanc.url}/dicom-web/studies/{study_uid}/series",
        params={"Modality": "SR"},
        timeout=30,
    ).json()
    # one results series per source series, whatever the destination (here both routes
    # lead to the same PACS: its two instances)
    assert len(found) == 1 and found[0]["00201209"]["Value"] == [2]
    instances = orthanc.get("/instances")
    assert len(instances) == len(ordered) + 2
    sent_uids = {by_name[names[k]]["sop_instance_uid"] for k in ("dicom", "web")}
    for orthanc_id in instances:
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags["SOPInstanceUID"] in sent_uids:
            assert tags["PatientID"] == d.PATIENT_ID
            assert tags["PatientName"] == d.PATIENT_NAME
            assert tags["AccessionNumber"] == d.ACCESSION
            raw = requests.get(f"{orthanc.url}/instances/{orthanc_id}/file", timeout=30).content
            assert iod_errors(raw) == []
    # a refusal for good fails at once; out of resources is retried, without a flood
    failed_now = by_name[names["refuses"]]
    assert failed_now["state"] == "failed" and failed_now["attempts"] == 1 == refuses.received
    assert "0x0122" in failed_now["error"] and "SOP Class Not Supported" in failed_now["error"]
    retried = by_name[names["busy"]]
    assert retried["state"] == "failed" and "retries ran out" in retried["error"]
    assert "0xA700" in retried["error"] and "Out of Resources" in retried["error"]
    # waits of 0.3 s doubling (jittered) within 5 s: a handful of attempts, not a flood
    assert 2 <= retried["attempts"] <= 7 and retried["attempts"] == busy.received
    dicom, web = by_name[names["dicom"]], by_name[names["web"]]
    print(
        f"\nexports of a 4-slice series, from the job's end: C-STORE stored after "
        f"{seconds_between(dicom['created_at'], dicom['stored_at']):.2f} s, committed after "
        f"{seconds_between(dicom['created_at'], dicom['committed_at']):.2f} s; STOW-RS stored "
        f"after {seconds_between(web['created_at'], web['stored_at']):.2f} s; the 0xA700 "
        f"destination: {retried['attempts']} attempts in the 5 s window"
    )


ROUND_TRIP_SLICES = int(os.environ.get("EXPORT_ROUND_TRIP_SLICES", "12"))
"""Slices of the series the round trip sends (120 for the numbers the docs quote)."""


def test_a_study_sent_by_the_pacs_comes_back_committed_with_no_one_acting(
    tmp_path, config, stack_key, worker, gateway_port
):
    """Orthanc C-STOREs a series to the gateway, which returns the result to the sender:
    the series ends complete by Orthanc's C-FIND count, the worker classifies it, the
    gateway sends the SR back and Orthanc's Storage Commitment report commits it."""
    from dicomnet.listener import start

    require_orthanc()
    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    files, ordered = d.ct_series(ROUND_TRIP_SLICES, seed=5)
    modalities = {"covidscan": ("COVIDSCAN", gateway_port)}
    orthanc_ae = f"PACS{uuid.uuid4().hex[:8].upper()}"  # its own AE: the sender's destination
    with Orthanc(
        tmp_path / "pacs", free_port(), free_port(), modalities, ae_title=orthanc_ae
    ) as orthanc:
        with factory.begin() as session:
            name = f"sender-{orthanc_ae.lower()}"
            register(session, dicom_spec(name, orthanc_ae, "127.0.0.1", orthanc.dicom_port), None)
        instances = [orthanc.upload(body) for body in files]
        _server, stop = start(
            settings,
            "127.0.0.1",
            gateway_port,
            "COVIDSCAN",
            "stack",
            ("CT",),
            return_to_sender=True,
        )
        client = authorised(create_app(config).test_client(), stack_key)
        try:
            started = time.monotonic()
            sent = orthanc.send("covidscan", [instances[0]["ParentSeries"]])
            assert sent.status_code == 200, sent.text
            received = time.monotonic()  # the last instance acknowledged
            exports: list[dict] = []
            while time.monotonic() - received < 120:
                jobs = client.get("/v1/jobs").get_json()["jobs"]
                mine = [j for j in jobs if name in (j.get("export_to") or [])]
                if mine:
                    exports = client.get(f"/v1/jobs/{mine[0]['id']}/exports").get_json()["exports"]
                    if exports and all(e["state"] in ("committed", "failed") for e in exports):
                        break
                time.sleep(0.2)
            committed = time.monotonic()
        finally:
            stop()
            engine.dispose()
        [export] = exports
        assert export["state"] == "committed", (export, orthanc.log_path.read_text()[-2000:])
        assert export["attempts"] == 1 and export["destination"] == name
        study = orthanc.get("/studies")
        assert len(study) == 1 and len(orthanc.get("/patients")) == 1
        assert len(orthanc.get(f"/studies/{study[0]}/series")) == 2  # the CT and the SR
    print(
        f"\nround trip of a {ROUND_TRIP_SLICES}-slice series: C-STORE to the gateway "
        f"{received - started:.2f} s; from the last instance received to the SR committed "
        f"{committed - received:.2f} s (job end to stored "
        f"{seconds_between(export['created_at'], export['stored_at']):.2f} s, to committed "
        f"{seconds_between(export['created_at'], export['committed_at']):.2f} s)"
    )

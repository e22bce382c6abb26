"""No patient attribute leaves its sealed object: DICOM with distinctive patient and study
values is sent through POST /v1/jobs, STOW-RS and C-STORE (a real pynetdicom SCU against
the listener in threads), classified, and read through every answer of its job; none of
the values is then in any SQL row, any log record, any answer or /metrics. The sealed
objects exist, hold none of them in plain text, open back to them with PHI_KEY, and are
gone once the jobs are deleted.

The first test shows that each grep finds the values where they are written in plain
text, so that the absences below mean something."""

from __future__ import annotations

import base64
import io
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pydicom
import pytest
from prometheus_client import REGISTRY, Gauge
from sqlalchemy import MetaData, select

from api import create_app
from core.patient import open_patient
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.session import make_engine
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key

pytestmark = pytest.mark.integration

ATTRIBUTES = {
    "PatientName": "Quixote^Alonso",
    "PatientID": d.PATIENT_ID,
    "PatientBirthDate": d.BIRTH_DATE,
    "AccessionNumber": d.ACCESSION,
    "StudyID": "SID-SECRET-5",
    "StudyDescription": "Lungs of La Mancha",
    "ReferringPhysicianName": "Panza^Sancho",
    "InstitutionName": "Toboso Secret Clinic",
    "PatientAge": "093Y",
    "PatientWeight": "71.3579",
    "OtherPatientIDs": "OTHER-ID-31415",
}
SOUGHT = {
    **{k: v for k, v in ATTRIBUTES.items() if "^" not in v},
    "PatientName": "Quixote",
    "PatientName (given)": "Alonso",
    "ReferringPhysicianName": "Sancho",
    "PatientBirthDate (ISO)": "1950-01-01",
}
"""What is looked for: each value, names by their parts, dates as written by a formatter."""
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=PatientData'
AE_TITLE = "COVIDSCAN"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def series(count: int) -> tuple[str, list[bytes]]:
    """``count`` slices of a new study carrying :data:`ATTRIBUTES`."""
    study = pydicom.uid.generate_uid()
    files, _ = d.ct_series(count, study_uid=study)
    marked = []
    for body in files:
        dataset = pydicom.dcmread(io.BytesIO(body))
        for keyword, value in ATTRIBUTES.items():
            setattr(dataset, keyword, value)
        marked.append(d.to_bytes(dataset))
    return study, marked


def found(text: str, only: Iterable[str] = SOUGHT) -> list[str]:
    """Which of the values sought are in ``text`` (any case)."""
    lowered = text.lower()
    return [name for name in only if SOUGHT[name].lower() in lowered]


def logged(caplog) -> str:
    """Every record captured, while the fixtures were set up (the submissions) and since."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    return "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in records)


def sql_dump(database_url: str) -> str:
    """Every row of every table, reflected from the database."""
    engine = make_engine(database_url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        with engine.connect() as connection:
            return "\n".join(
                f"{table.name}: {row!r}"
                for table in metadata.sorted_tables
                for row in connection.execute(select(table))
            )
    finally:
        engine.dispose()


def classify_all(database_url: str) -> None:
    """What a worker writes: every waiting scan succeeds."""
    from db.identity import ModelIdentity
    from db.scans import ScanOutcome, claim_next, write_outcomes
    from db.session import make_session_factory

    engine = make_engine(database_url)
    identity = ModelIdentity("tiny", "1", "a" * 64, True, "test", "fp32", "seed-v1")
    try:
        with make_session_factory(engine).begin() as session:
            leases = claim_next(session, "test/1", 1000, 60)
            outcomes = [
                ScanOutcome(lease.scan_id, 0.8, "COVID", preprocessing="seed-v1")
                for lease in leases
            ]
            write_outcomes(session, outcomes, leases, identity, "w@test", "test/1")
    finally:
        engine.dispose()


@dataclass
class Sent:
    job_id: str
    study_uid: str
    answer: str  # what the entry path answered
    exported: list[bytes] = field(default_factory=list)  # instances sent to a destination


@pytest.fixture
def config(app_config):
    return {**app_config, "PHI_KEY": new_key(), "MAX_ACTIVE_JOBS": "20"}


@pytest.fixture
def owner():
    return f"patient-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(config, owner):
    key = create_api_key(config["DATABASE_URL"], owner=owner, scopes="submit,read")
    return authorised(create_app(config).test_client(), key)


@pytest.fixture
def admin(config):
    key = create_api_key(config["DATABASE_URL"], owner="ops", scopes="admin")
    return authorised(create_app(config).test_client(), key)


def send_multipart(client, files: list[bytes], **fields: str) -> tuple[str, str]:
    data = {"files": [(io.BytesIO(body), f"IM{i}") for i, body in enumerate(files)], **fields}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"], response.get_data(as_text=True)


def send_stow(client, files: list[bytes]) -> tuple[str, str]:
    head = b"--PatientData\r\nContent-Type: application/dicom\r\n\r\n"
    body = b"".join(head + f + b"\r\n" for f in files) + b"--PatientData--\r\n"
    response = client.post("/v1/dicomweb/studies", data=body, content_type=STOW_TYPE)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.headers["Location"].rsplit("/", 1)[1], response.get_data(as_text=True)


def send_c_store(config, owner: str, files: list[bytes]) -> tuple[str, str]:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from devtools.embedded_redis import free_port
    from dicomnet.listener import start

    port = free_port()
    _server, stop = start(load_settings(config), "127.0.0.1", port, AE_TITLE, owner, ("CT",))
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(pydicom.dcmread(io.BytesIO(f))).Status for f in files]
        finally:
            assoc.release()
        assert statuses == [0] * len(files)
    finally:
        stop()
    return "", ""


def answers_of(client, job_id: str) -> dict[str, str]:
    """Every answer the API and the page give about the job (but its SR)."""
    series = client.get(f"/v1/jobs/{job_id}/series?slices=true")
    answers = {
        "job": client.get(f"/v1/jobs/{job_id}"),
        "jobs": client.get("/v1/jobs"),
        "results": client.get(f"/v1/jobs/{job_id}/results"),
        "results.csv": client.get(f"/v1/jobs/{job_id}/results?format=csv"),
        "series": series,
        "page": client.get(f"/jobs/{job_id}"),
        "deliveries": client.get(f"/v1/jobs/{job_id}/deliveries"),
        "exports": client.get(f"/v1/jobs/{job_id}/exports"),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.get_data(as_text=True))
    texts = {name: answer.get_data(as_text=True) for name, answer in answers.items()}
    for scan in answers["results"].get_json()["results"]:
        thumbnail = client.get(f"/v1/scans/{scan['scan_id']}/thumbnail")
        texts[f"thumbnail {scan['scan_id']}"] = thumbnail.get_data().decode("latin-1")
    return texts


def sr_of(client, job_id: str) -> str:
    [one] = client.get(f"/v1/jobs/{job_id}/series").get_json()["series"]
    answer = client.get(f"/v1/jobs/{job_id}/series/{one['series_uid']}/sr")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data().decode("latin-1")


@pytest.fixture
def sent(config, client, owner, caplog) -> list[Sent]:
    """One study through each entry path, classified; the logs captured from the start."""
    caplog.set_level(logging.DEBUG)
    register_destination(config, "pacs")
    jobs = []
    for send in ("multipart", "stow-rs", "c-store"):
        study, files = series(2)
        if send == "multipart":
            job_id, answer = send_multipart(client, files, export_to="pacs")
        elif send == "stow-rs":
            job_id, answer = send_stow(client, files)
        else:
            send_c_store(config, owner, files)
            listed = client.get("/v1/jobs").get_json()["jobs"]
            job_id, answer = next(j["id"] for j in listed if j["name"] == "DICOM C-STORE"), ""
        jobs.append(Sent(job_id, study, answer))
    classify_all(config["DATABASE_URL"])
    jobs[0].exported = export_all(config, [one.job_id for one in jobs])
    return jobs


def register_destination(config, name: str) -> None:
    from core.destinations import dicom_spec, register
    from db.session import make_session_factory

    engine = make_engine(config["DATABASE_URL"])
    try:
        with make_session_factory(engine).begin() as session:
            register(session, dicom_spec(name, "PACS", "127.0.0.1", 104), None)
    finally:
        engine.dispose()


def export_all(config, job_ids: list[str]) -> list[bytes]:
    """The jobs' ends recorded (their exports made), and every due export sent to a
    stand-in PACS that stores it; the instances it got."""
    from core.exports import STORED, Delivery, export_due
    from core.jobs.ending import commit_ending
    from db.session import make_session_factory

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    received: list[bytes] = []

    def send(target, instance, export):
        received.append(instance)
        return Delivery(STORED, f"C-STORE to {target.name} stored (0x0000)")

    try:
        with factory() as session:
            commit_ending(session, job_ids, factory, None)
        export_due(factory, open_blob_store(settings.blob_dir, settings.blob_store), settings, send)
    finally:
        engine.dispose()
    return received


def test_each_grep_finds_the_values_where_they_are_in_plain_text(
    config, client, admin, caplog, tmp_path
):
    """The greps below can fail: a value put in SQL, a log, an answer or a stored object
    in plain text is found there."""
    caplog.set_level(logging.DEBUG)
    _study, files = series(1)
    data = {"files": [(io.BytesIO(files[0]), "IM0")], "name": ATTRIBUTES["PatientID"]}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    job_id = response.get_json()["id"]
    assert found(sql_dump(config["DATABASE_URL"])) == ["PatientID"]
    assert found(answers_of(client, job_id)["job"]) == ["PatientID"]
    logging.getLogger("core.patient").info("seen %s", ATTRIBUTES["AccessionNumber"])
    assert found(logged(caplog)) == ["AccessionNumber"]
    assert set(found(files[0].decode("latin-1"))) >= set(SOUGHT) - {"PatientBirthDate (ISO)"}
    gauge = Gauge("covidscan_test_leak", "a metric labelled with a value", ["who"])
    try:
        gauge.labels(ATTRIBUTES["StudyID"]).set(1)
        assert found(admin.get("/metrics").get_data(as_text=True)) == ["StudyID"]
    finally:
        REGISTRY.unregister(gauge)


def test_no_patient_attribute_is_in_sql_logs_answers_or_metrics(
    config, client, admin, sent, caplog
):
    # put back only into the instance sent to a destination (the grep finds them there)
    [exported] = sent[0].exported
    assert {"PatientID", "PatientName", "AccessionNumber", "StudyID"} <= set(
        found(exported.decode("latin-1"))
    )
    exports = client.get(f"/v1/jobs/{sent[0].job_id}/exports").get_json()["exports"]
    assert [e["state"] for e in exports] == ["stored"]
    assert found(logged(caplog)) == [], "patient attributes in the logs"
    assert found(sql_dump(config["DATABASE_URL"])) == [], "patient attributes in SQL"
    for one in sent:
        assert found(one.answer) == [], f"in the answer to the submission of {one.job_id}"
        for name, text in answers_of(client, one.job_id).items():
            assert found(text) == [], f"patient attributes in the answer {name} of {one.job_id}"
        assert found(sr_of(client, one.job_id)) == [], (
            f"patient attributes in the SR of {one.job_id}"
        )
    audit = admin.get("/v1/audit?limit=500")
    assert audit.status_code == 200 and audit.get_json()["events"]
    assert found(audit.get_data(as_text=True)) == [], "patient attributes in the audit log"
    metrics = admin.get("/metrics")
    assert metrics.status_code == 200
    assert found(metrics.get_data(as_text=True)) == [], "patient attributes in /metrics"


def test_the_sealed_attributes_open_back_and_go_with_the_job(config, client, sent):
    settings = load_settings(config)
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)
    for one in sent:
        key = blobs.patient_key(one.job_id, one.study_uid)
        assert key in blobs.keys(one.job_id)
        sealed = blobs.get(key)
        assert found(sealed.decode("latin-1")) == [], "the sealed object holds plain text"
        kept = open_patient(blobs, one.job_id, one.study_uid, config["PHI_KEY"])
        for keyword, value in ATTRIBUTES.items():
            assert str(kept.get(keyword)) == value, keyword
        assert client.delete(f"/v1/jobs/{one.job_id}").status_code == 204
        assert blobs.keys(one.job_id) == []
        assert open_patient(blobs, one.job_id, one.study_uid, config["PHI_KEY"]) is None

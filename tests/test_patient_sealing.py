"""Patient and study attributes kept sealed beside a job's files: read from the header at
intake, stored once per study, opened again with PHI_KEY, and deleted with the job by the
route, by retention and by the orphan sweep, on the folder store and on a real S3 store."""

from __future__ import annotations

import base64
import io
import logging
import secrets
import uuid
from datetime import timedelta

import pydicom
import pytest
from sqlalchemy import update

import core.patient
from core.intake import ParsedUpload, UploadLimits, iter_scans, scans_of
from core.intake.dicom_header import read_dicom_header
from core.jobs.storing import store_uploads
from core.patient import PATIENT_KEYWORDS, open_patient, patient_sealer
from core.sealing import MissingKey, SealError
from core.sweep import delete_orphan_blobs, sweep_once
from covidscan.settings import load_settings
from db.blobs import FileBlobStore, open_blob_store
from db.models import Job, new_id, utcnow
from db.session import make_engine, make_session_factory
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key

NAME = "Quixote^Alonso"
STUDY_ID = "SID-SECRET-5"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def ct(study_uid: str, **changes) -> bytes:
    """A CT slice of ``study_uid`` with the test's patient, and ``changes``."""
    return d.ct_bytes(
        **{
            "StudyInstanceUID": study_uid,
            "SOPInstanceUID": pydicom.uid.generate_uid(),
            "PatientName": NAME,
            "StudyID": STUDY_ID,
            **changes,
        }
    )


def stored(blobs, key: str, files: list[tuple[str, bytes]], job_id=None) -> list:
    """What an entry path does: check ``files`` at intake and store them under ``key``'s job."""
    limits = UploadLimits(10_000_000, 100, sealer=patient_sealer(key))
    job = job_id or new_id()
    parts = [(name, io.BytesIO(body)) for name, body in files]
    store_uploads(
        blobs,
        iter_scans(parts, limits, ParsedUpload()),
        lambda i: blobs.key_for(job, i),
        scans_of,
    )
    return job


# Reading, sealing, opening


def test_the_header_read_seals_the_patient_module_and_it_opens_back_with_the_key(tmp_path):
    key = new_key()
    study = pydicom.uid.generate_uid()
    body = ct(study, PatientSex="F", PatientAge="093Y")
    header = read_dicom_header(body, "a.dcm", sealer=patient_sealer(key))
    assert header.patient is not None and header.patient.study_uid == study
    for value in (NAME, d.PATIENT_ID, d.ACCESSION, d.BIRTH_DATE, STUDY_ID):
        assert value.encode() not in header.patient.sealed
        assert value not in repr(header)
    blobs = FileBlobStore(tmp_path)
    job = stored(blobs, key, [("a.dcm", body)])
    assert blobs.keys(job) == [f"{job}/000000", f"{job}/patient/{study}.sealed"]
    kept = open_patient(blobs, job, study, key)
    assert kept is not None
    assert str(kept.PatientName) == NAME and kept.PatientID == d.PATIENT_ID
    assert kept.PatientBirthDate == d.BIRTH_DATE and kept.AccessionNumber == d.ACCESSION
    assert (kept.StudyID, kept.PatientSex, kept.PatientAge) == (STUDY_ID, "F", "093Y")
    assert set(kept.dir()) <= set(PATIENT_KEYWORDS)
    assert "PixelData" not in kept and "SeriesInstanceUID" not in kept


def test_opening_needs_the_same_key_and_says_what_is_missing(tmp_path):
    key = new_key()
    study = pydicom.uid.generate_uid()
    blobs = FileBlobStore(tmp_path)
    job = stored(blobs, key, [("a.dcm", ct(study))])
    with pytest.raises(MissingKey, match="PHI_KEY is not set: filing a result"):
        open_patient(blobs, job, study, None)
    with pytest.raises(SealError, match="another PHI_KEY"):
        open_patient(blobs, job, study, new_key())
    assert open_patient(blobs, job, pydicom.uid.generate_uid(), key) is None  # not kept
    assert open_patient(blobs, job, "../../etc", key) is None  # not a UID: never a key


def test_the_first_instance_of_a_study_wins_and_a_different_one_is_logged_without_values(
    tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    key = new_key()
    study = pydicom.uid.generate_uid()
    blobs = FileBlobStore(tmp_path)
    other = "Sancho^Panza"
    job = stored(blobs, key, [("a.dcm", ct(study)), ("b.dcm", ct(study, PatientName=other))])
    assert str(open_patient(blobs, job, study, key).PatientName) == NAME
    # later requests to the same job: the same study is compared with what is stored
    stored(blobs, key, [("c.dcm", ct(study, PatientName=other))], job_id=job)
    stored(blobs, key, [("d.dcm", ct(study))], job_id=job)
    assert str(open_patient(blobs, job, study, key).PatientName) == NAME
    warnings = [r.getMessage() for r in caplog.records if "first are kept" in r.getMessage()]
    assert len(warnings) == 2 and all(study in w and job in w for w in warnings)
    assert not any(
        "Sancho" in r.getMessage() or "Quixote" in r.getMessage() for r in caplog.records
    )
    assert len([k for k in blobs.keys(job) if "/patient/" in k]) == 1


def test_an_unreadable_attribute_is_left_out_and_named_never_quoted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    key = new_key()
    study = pydicom.uid.generate_uid()
    body = ct(study, PatientWeight="77.75").replace(b"77.75", b"ab\xffcd")
    blobs = FileBlobStore(tmp_path)
    job = stored(blobs, key, [("a.dcm", body)])
    kept = open_patient(blobs, job, study, key)
    assert "PatientWeight" not in kept and str(kept.PatientName) == NAME
    [warning] = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert warning == "a.dcm: unreadable PatientWeight left out of the patient attributes kept"


def test_a_study_uid_that_is_not_a_uid_keeps_nothing_and_the_upload_goes_on(tmp_path):
    key = new_key()
    blobs = FileBlobStore(tmp_path)
    job = stored(blobs, key, [("a.dcm", ct("../../outside"))])
    assert blobs.keys(job) == [f"{job}/000000"]
    assert not any(tmp_path.parent.rglob("outside*"))


def test_without_phi_key_nothing_is_kept_and_one_warning_says_what_it_costs(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(core.patient, "_warned", set())
    caplog.set_level(logging.DEBUG)
    blobs = FileBlobStore(tmp_path)
    settings = load_settings({})
    for _ in range(3):
        limits = UploadLimits.from_settings(settings)
        assert limits.sealer is None
    job = new_id()
    new_scans = store_uploads(
        blobs,
        iter_scans([("a.dcm", io.BytesIO(ct("1.2.3")))], limits, ParsedUpload()),
        lambda i: blobs.key_for(job, i),
        scans_of,
    )
    assert len(new_scans) == 1 and blobs.keys(job) == [f"{job}/000000"]
    [warning] = [r for r in caplog.records if "PHI_KEY" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "cannot be filed under their patient" in warning.getMessage()


def test_a_refused_upload_deletes_the_patient_attributes_it_stored(tmp_path):
    key = new_key()
    study = pydicom.uid.generate_uid()
    blobs = FileBlobStore(tmp_path)
    job = stored(blobs, key, [("a.dcm", ct(study))])
    new_study = pydicom.uid.generate_uid()
    limits = UploadLimits(10_000_000, 100, sealer=patient_sealer(key))
    parts = [("b.dcm", io.BytesIO(ct(new_study))), ("c.txt", io.BytesIO(b"not an image"))]
    with pytest.raises(Exception, match="neither a PNG"):
        store_uploads(
            blobs,
            iter_scans(parts, limits, ParsedUpload()),
            lambda i: blobs.part_key(job, "p", i),
            scans_of,
        )
    assert blobs.keys(job) == [f"{job}/000000", f"{job}/patient/{study}.sealed"]


# Deleted with the job, on both stores


@pytest.fixture(params=["folder", "s3"])
def config(request, app_config):
    config = {**app_config, "PHI_KEY": new_key()}
    if request.param == "s3":
        s3_server = request.getfixturevalue("s3_server")
        config.update(s3_server.env(prefix=f"sealed-{uuid.uuid4().hex[:8]}"))
    return config


def _submit(client, study: str) -> str:
    data = {"files": [(io.BytesIO(ct(study)), "a.dcm"), (io.BytesIO(ct(study)), "b.dcm")]}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.mark.integration
def test_the_route_retention_and_the_orphan_sweep_delete_the_sealed_attributes(config):
    from api import create_app

    settings = load_settings(config)
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)
    key = create_api_key(config["DATABASE_URL"], owner=f"sealed-{uuid.uuid4().hex[:6]}")
    client = authorised(create_app(config).test_client(), key)
    sessions = make_session_factory(make_engine(config["DATABASE_URL"]))
    studies = [pydicom.uid.generate_uid() for _ in range(3)]
    deleted, expired, kept = (_submit(client, study) for study in studies)
    for job, study in zip((deleted, expired, kept), studies):
        assert f"{job}/patient/{study}.sealed" in blobs.keys(job)
        assert open_patient(blobs, job, study, config["PHI_KEY"]) is not None

    assert client.delete(f"/v1/jobs/{deleted}").status_code == 204
    assert blobs.keys(deleted) == []
    assert open_patient(blobs, deleted, studies[0], config["PHI_KEY"]) is None

    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == expired).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    report = sweep_once(sessions, blobs, lambda tasks: None, settings, orphan_grace=3600)
    assert report.jobs_deleted == 1
    assert blobs.keys(expired) == []
    assert f"{kept}/patient/{studies[2]}.sealed" in blobs.keys(kept)

    orphan = stored(blobs, config["PHI_KEY"], [("a.dcm", ct(studies[0]))])  # no job row
    assert f"{orphan}/patient/{studies[0]}.sealed" in blobs.keys(orphan)
    assert delete_orphan_blobs(sessions, blobs, grace_seconds=-60) == 1
    assert blobs.keys(orphan) == [] and blobs.keys(kept) != []
    sessions.kw["bind"].dispose()

"""A real PACS (Orthanc) talks to ``covidscan dicom-listen`` as a hospital's would."""

import pytest
from sqlalchemy import select

from db.models import Job, Scan
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import free_port
from tests import dicom_files as d
from tests.dicom_listener import dicom_listener
from tests.pacs import Orthanc, require_orthanc

pytestmark = pytest.mark.integration


@pytest.fixture
def listener_port(app_config):
    with dicom_listener(app_config) as port:
        yield port


@pytest.fixture
def orthanc(tmp_path, listener_port):
    require_orthanc()
    with Orthanc(
        tmp_path / "orthanc", free_port(), free_port(), {"covidscan": ("COVIDSCAN", listener_port)}
    ) as pacs:
        yield pacs


def test_the_pacs_verifies_the_listener_with_c_echo(orthanc):
    answer = orthanc.echo("covidscan")
    assert answer.status_code == 200, answer.text


def test_a_series_sent_by_the_pacs_becomes_one_job(orthanc, app_config):
    files, ordered = d.ct_series(12, seed=7)
    study = {orthanc.upload(body)["ParentStudy"] for body in files}
    assert len(study) == 1
    sent = orthanc.send("covidscan", sorted(study))
    assert sent.status_code == 200, sent.text
    with make_session_factory(make_engine(app_config["DATABASE_URL"]))() as session:
        [job] = session.scalars(select(Job)).all()
        scans = session.scalars(select(Scan).where(Scan.job_id == job.id)).all()
    assert job.owner == "radiology"
    assert sorted(s.sop_instance_uid for s in scans) == sorted(ordered)


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_a_compressed_slice_is_pushed_as_the_pacs_holds_it(orthanc, app_config, tmp_path, syntax):
    """Orthanc cannot transcode JPEG 2000: the listener must accept what the PACS holds."""
    instance = orthanc.upload(d.ct_compressed_by_gdcm(syntax, tmp_path))
    sent = orthanc.send("covidscan", [instance["ID"]])
    assert sent.status_code == 200, sent.text
    with make_session_factory(make_engine(app_config["DATABASE_URL"]))() as session:
        [scan] = session.scalars(select(Scan)).all()
    assert scan.modality == "CT"

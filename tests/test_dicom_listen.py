"""``covidscan dicom-listen`` as a real process, fed by pynetdicom's own ``storescu``."""

import subprocess
import sys

import pytest
from sqlalchemy import select

from db.models import Job, Scan
from db.session import make_engine, make_session_factory
from tests import dicom_files as d
from tests.dicom_listener import dicom_listener

pytestmark = pytest.mark.integration


@pytest.fixture
def listener(app_config):
    with dicom_listener(app_config) as port:
        yield port


def test_a_study_pushed_with_storescu_becomes_one_job(listener, app_config, tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    files, _ = d.ct_series(5, seed=4)
    for index, body in enumerate(files):
        (folder / f"IM{index}").write_bytes(body)
    (folder / "MR0").write_bytes(d.ct_bytes(Modality="MR"))
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescu",
            "127.0.0.1",
            str(listener),
            str(folder),
            "-aec",
            "COVIDSCAN",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = sent.stdout + sent.stderr
    assert log.count("Received Store Response (Status: 0x0000 - Success)") == 5, log
    assert "0x0122" in log  # the MR slice: refused, SOP class (modality) not supported
    with make_session_factory(make_engine(app_config["DATABASE_URL"]))() as session:
        [job] = session.scalars(select(Job)).all()
        scans = session.scalars(select(Scan).where(Scan.job_id == job.id)).all()
    assert job.owner == "radiology" and job.series_rule == "top10pct-mean"
    assert len(scans) == 5 and {s.modality for s in scans} == {"CT"}
    assert len({s.series_uid for s in scans}) == 1

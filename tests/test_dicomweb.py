"""STOW-RS through the real dicomweb-client over HTTP, against the real API (no worker:
stored instances stay queued)."""

import io

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from api.dicomweb import split_parts
from tests import dicom_files as d
from tests.browser import LiveServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(app):
    with LiveServer(app) as live:
        yield live


def dicomweb(server, key, job=None) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    if job:
        session.params = {"job": job}
    return DICOMwebClient(url=f"{server.url}/v1/dicomweb", session=session)


def jobs(client):
    return client.get("/v1/jobs").get_json()["jobs"]


def test_stow_stores_a_series_into_a_new_job_and_answers_the_standard_response(
    server, client, api_key
):
    files, _ = d.ct_series(4, seed=1)
    datasets = [pydicom.dcmread(io.BytesIO(body)) for body in files]
    answer = dicomweb(server, api_key).store_instances(datasets)
    referenced = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in answer
    [job] = jobs(client)
    assert job["counts"]["total"] == 4
    rows = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    assert {r["series_uid"] for r in rows} == {str(datasets[0].SeriesInstanceUID)}


def test_stow_into_an_existing_job_and_report_what_is_not_stored(server, client, api_key):
    first, _ = d.ct_series(2, seed=2)
    dicomweb(server, api_key).store_instances([pydicom.dcmread(io.BytesIO(first[0]))])
    [job] = jobs(client)
    report = pydicom.dcmread(io.BytesIO(d.structured_report()))
    more = [pydicom.dcmread(io.BytesIO(first[1])), report]
    answer = dicomweb(server, api_key, job=job["id"]).store_instances(more)  # 202
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        more[0].SOPInstanceUID
    ]
    [failure] = answer.FailedSOPSequence
    assert failure.ReferencedSOPInstanceUID == report.SOPInstanceUID
    assert failure.FailureReason == 0x0122  # SOP class not supported
    body = requests.post(
        f"{server.url}/v1/dicomweb/studies?job={job['id']}",
        data=multipart([d.structured_report()]),
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ',
        },
    )
    assert body.status_code == 409  # none stored
    failed = body.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0x0122]
    assert failed[0]["00081150"]["Value"] == ["1.2.840.10008.5.1.4.1.1.88.11"]
    assert len(jobs(client)) == 1
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["counts"]["total"] == 2


def test_stow_needs_a_key_and_the_right_content_type(server, api_key):
    assert requests.post(f"{server.url}/v1/dicomweb/studies", data=b"").status_code == 401
    wrong = requests.post(
        f"{server.url}/v1/dicomweb/studies",
        data=b"x",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/octet-stream"},
    )
    assert wrong.status_code == 415 and "multipart/related" in wrong.json()["detail"]


def multipart(bodies, boundary=b"XyZ"):
    out = b""
    for body in bodies:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_split_parts_returns_each_body_unchanged():
    bodies = [b"\r\n--Xy\r\nabc", b"", d.ct_bytes()]
    assert split_parts(multipart(bodies), b"XyZ") == bodies


def test_stow_requests_appending_to_one_job_at_once_keep_every_instance_apart(
    server, client, api_key, app_config
):
    """Each request's instances get positions and stored bytes of their own: none is lost,
    and no scan points at another instance's bytes."""
    import threading
    from pathlib import Path

    from sqlalchemy import select

    from db.models import Scan
    from db.session import make_engine, make_session_factory

    files, _ = d.ct_series(9, seed=7)
    datasets = [pydicom.dcmread(io.BytesIO(body)) for body in files]
    dicomweb(server, api_key).store_instances(datasets[:1])
    [job] = jobs(client)
    errors = []

    def send(batch):
        try:
            dicomweb(server, api_key, job=job["id"]).store_instances(batch)
        except Exception as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=send, args=(datasets[1 + 2 * i : 3 + 2 * i],)) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    engine = make_engine(app_config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            scans = list(session.scalars(select(Scan).where(Scan.job_id == job["id"])))
    finally:
        engine.dispose()
    assert sorted(s.position for s in scans) == list(range(9))
    blobs = Path(app_config["BLOB_DIR"])
    stored = {s.sop_instance_uid: pydicom.dcmread(blobs / s.blob_key).SOPInstanceUID for s in scans}
    assert stored == {str(ds.SOPInstanceUID): ds.SOPInstanceUID for ds in datasets}

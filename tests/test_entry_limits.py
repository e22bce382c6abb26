"""The job limits hold on the ways in that used to pass them: STOW-RS appends and
MAX_SCANS_PER_JOB, parts of an open job and MAX_ACTIVE_JOBS, and a two-step upload whose
slices are written again after its start (a real S3 server)."""

from __future__ import annotations

import io
import uuid

import pytest
import requests
from sqlalchemy import select

from api import create_app
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.models import Scan
from db.session import make_engine, make_session_factory
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.integration


def keyed_client(config, owner=None):
    key = create_api_key(config["DATABASE_URL"], owner=owner or f"lim-{uuid.uuid4().hex[:8]}")
    return authorised(create_app(config).test_client(), key)


def blob_store(config):
    settings = load_settings(config)
    return open_blob_store(settings.blob_dir, settings.blob_store)


def stow(client, instances, job=None):
    boundary = b"Limits"
    body = (
        b"".join(
            b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
            for part in instances
        )
        + b"--"
        + boundary
        + b"--\r\n"
    )
    return client.post(
        "/v1/dicomweb/studies" + (f"?job={job}" if job else ""),
        data=body,
        content_type='multipart/related; type="application/dicom"; boundary=Limits',
    )


def job_id_of(response) -> str:
    return response.headers["Location"].rsplit("/", 1)[1]


def total(client, job_id) -> int:
    return client.get(f"/v1/jobs/{job_id}").get_json()["counts"]["total"]


def test_stow_appends_past_max_scans_per_job_are_refused_and_keep_nothing(app_config):
    config = {**app_config, "MAX_SCANS_PER_JOB": "3"}
    client = keyed_client(config)
    first, _ = d.ct_series(2, seed=31)
    created = stow(client, first)
    assert created.status_code == 200, created.get_data(as_text=True)
    job_id = job_id_of(created)
    more, _ = d.ct_series(2, seed=32)
    refused = stow(client, more, job=job_id)
    assert refused.status_code == 413, refused.get_data(as_text=True)
    assert "MAX_SCANS_PER_JOB" in refused.get_json()["detail"]
    assert total(client, job_id) == 2
    assert len(blob_store(config).keys(job_id)) == 2  # the refused instances' files are gone
    one, _ = d.ct_series(1, seed=33)
    assert stow(client, one, job=job_id).status_code == 200  # up to the limit still fits
    assert total(client, job_id) == 3


def parts_form(*items):
    return {"files": [(io.BytesIO(data), name) for name, data in items]}


def test_a_part_that_makes_an_idle_open_job_busy_counts_against_max_active_jobs(app_config):
    """The rule of a new job: after the part is written, the owner may not have more than
    MAX_ACTIVE_JOBS unfinished jobs. An open job with waiting scans is one of them already
    (its next part is taken); an idle one becomes one with its part."""
    config = {**app_config, "MAX_ACTIVE_JOBS": "1"}
    client = keyed_client(config)
    opened = client.post("/v1/jobs", data={"open": "true"}, content_type="multipart/form-data")
    assert opened.status_code == 202
    open_id = opened.get_json()["id"]
    busy = client.post(
        "/v1/jobs", data=parts_form(("a.png", png_bytes(24))), content_type="multipart/form-data"
    )
    assert busy.status_code == 202  # the open job holds no waiting scan: one unfinished job
    refused = client.post(
        f"/v1/jobs/{open_id}/scans",
        data=parts_form(("b.png", png_bytes(24, seed=1))),
        content_type="multipart/form-data",
    )
    assert refused.status_code == 429, refused.get_json()
    assert "MAX_ACTIVE_JOBS" in refused.get_json()["detail"] and refused.headers["Retry-After"]
    assert total(client, open_id) == 0
    assert blob_store(config).keys(open_id) == []


def test_an_open_job_with_waiting_scans_takes_its_next_part_at_max_active_jobs(app_config):
    config = {**app_config, "MAX_ACTIVE_JOBS": "1"}
    client = keyed_client(config)
    opened = client.post(
        "/v1/jobs",
        data={"open": "true", **parts_form(("a.png", png_bytes(24)))},
        content_type="multipart/form-data",
    )
    assert opened.status_code == 202
    open_id = opened.get_json()["id"]
    more = client.post(
        f"/v1/jobs/{open_id}/scans",
        data=parts_form(("b.png", png_bytes(24, 1))),
        content_type="multipart/form-data",
    )
    assert more.status_code == 202, more.get_json()
    other = client.post(
        "/v1/jobs",
        data=parts_form(("c.png", png_bytes(24, seed=2))),
        content_type="multipart/form-data",
    )
    assert other.status_code == 429 and "MAX_ACTIVE_JOBS" in other.get_json()["detail"]
    assert total(client, open_id) == 2


@pytest.fixture
def s3_config(app_config, s3_server):
    return {**app_config, **s3_server.env(prefix=f"limits-{uuid.uuid4().hex[:8]}")}


def test_a_put_after_start_changes_nothing_a_worker_reads(s3_config):
    client = keyed_client(s3_config)
    items = [(f"s{i}.png", png_bytes(40, seed=40 + i)) for i in range(2)]
    created = client.post(
        "/v1/jobs", json={"files": [{"filename": name, "size": len(data)} for name, data in items]}
    ).get_json()
    for part, (_name, data) in zip(created["parts"], items):
        assert (
            requests.put(part["url"], data=data, headers=part["headers"], timeout=10).status_code
            == 200
        )
    started = client.post(created["start_url"])
    assert started.status_code == 202, started.get_json()
    swapped = b"<html>" + b"\0" * (len(items[0][1]) - 6)  # what the checks would refuse
    late = requests.put(
        created["parts"][0]["url"], data=swapped, headers=created["parts"][0]["headers"], timeout=10
    )
    assert late.status_code in (200, 403)  # the URL may still take it: it writes nowhere read
    engine = make_engine(s3_config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            keys = list(
                session.scalars(
                    select(Scan.blob_key)
                    .where(Scan.job_id == created["id"])
                    .order_by(Scan.position)
                )
            )
    finally:
        engine.dispose()
    blobs = blob_store(s3_config)
    assert [blobs.get(key) for key in keys] == [data for _name, data in items]

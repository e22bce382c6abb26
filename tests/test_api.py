"""The HTTP API against a real Redis and a real database (no worker: jobs stay queued)."""

import io
import os

import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from db.models import Job, Scan
from tests.conftest import authorised
from tests.images import png_bytes, zip_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def app_config(app_config):
    """Redis database 1: the session's worker consumes wake-ups on database 0, and these
    tests count the wake-ups the API leaves on the queue."""
    return {**app_config, "REDIS_URL": app_config["REDIS_URL"].rsplit("/", 1)[0] + "/1"}


def files(*items):
    return {"files": [(io.BytesIO(data), name) for name, data in items]}


def queue_length(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen("covidscan")
    finally:
        client.close()


def row_counts(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        counts = (
            conn.scalar(select(func.count()).select_from(Job)),
            conn.scalar(select(func.count()).select_from(Scan)),
        )
    engine.dispose()
    return counts


def blob_files(app_config):
    root = app_config["BLOB_DIR"]
    return [f for _, _, names in os.walk(root) for f in names] if os.path.isdir(root) else []


def test_submit_answers_202_with_location_and_enqueues_chunks(client, app_config):
    before = queue_length(app_config["REDIS_URL"])
    slices = [(f"s{i}.png", png_bytes(32, seed=i)) for i in range(10)]
    response = client.post(
        "/v1/jobs", data={**files(*slices), "name": "ward 3"}, content_type="multipart/form-data"
    )
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert body["status"] == "queued" and body["name"] == "ward 3"
    assert body["counts"] == {
        "total": 10,
        "queued": 10,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert body["priority"] == "normal" and body["expires_at"] > body["created_at"]
    # BATCH_SIZE=8: two wake-ups, so the job's scans spread over two free workers.
    assert queue_length(app_config["REDIS_URL"]) - before == 2
    results = client.get(f"/v1/jobs/{body['id']}/results").get_json()
    assert [r["filename"] for r in results["results"]] == [n for n, _ in slices]
    assert all(
        r["status"] == "queued" and r["probability_covid"] is None for r in results["results"]
    )


def test_zip_upload_reports_entries_it_did_not_take(client):
    archive = zip_bytes([("a/1.png", png_bytes(16)), ("a/readme.txt", b"hi")])
    body = client.post(
        "/v1/jobs", data=files(("set.zip", archive)), content_type="multipart/form-data"
    ).get_json()
    assert body["counts"]["total"] == 1
    assert body["skipped"] == [
        {"filename": "set.zip/a/readme.txt", "reason": "not a PNG, JPEG or DICOM image"}
    ]


def test_no_files_is_400_problem_json(client):
    response = client.post("/v1/jobs", data={"name": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 400 and body["title"] == "Bad Request" and "files" in body["detail"]


def test_unsupported_file_is_415_and_leaves_nothing_behind(client, app_config):
    jobs_before = row_counts(app_config["DATABASE_URL"])
    queued_before = queue_length(app_config["REDIS_URL"])
    response = client.post(
        "/v1/jobs",
        data=files(("good.png", png_bytes(16)), ("notes.png", b"just text")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 415
    assert "notes.png" in response.get_json()["detail"]
    assert row_counts(app_config["DATABASE_URL"]) == jobs_before
    assert blob_files(app_config) == []
    assert queue_length(app_config["REDIS_URL"]) == queued_before


def test_upload_over_the_request_limit_is_413(app_config, api_key):
    from api import create_app

    client = authorised(
        create_app({**app_config, "MAX_UPLOAD_BYTES": "2000"}).test_client(), api_key
    )
    response = client.post(
        "/v1/jobs", data=files(("big.png", png_bytes(256))), content_type="multipart/form-data"
    )
    assert response.status_code == 413
    assert "MAX_UPLOAD_BYTES" in response.get_json()["detail"]
    assert blob_files(app_config) == []


def test_unknown_job_is_404(client):
    response = client.get("/v1/jobs/nope")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


def test_results_paginate_in_upload_order_and_stream_as_csv(client):
    slices = [(f"p{i:02d}.png", png_bytes(16, seed=i)) for i in range(7)]
    job = client.post(
        "/v1/jobs", data=files(*slices), content_type="multipart/form-data"
    ).get_json()
    names, cursor = [], None
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job['id']}/results", query_string=query).get_json()
        names += [r["filename"] for r in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [n for n, _ in slices]
    csv_text = client.get(f"/v1/jobs/{job['id']}/results?format=csv").get_data(as_text=True)
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("scan_id,filename,status,probability_covid,label,error")
    assert [line.split(",")[1] for line in lines[1:]] == names


def test_bad_pagination_arguments_are_400(client):
    job = client.post(
        "/v1/jobs", data=files(("a.png", png_bytes(16))), content_type="multipart/form-data"
    ).get_json()
    assert client.get(f"/v1/jobs/{job['id']}/results?limit=0").status_code == 400
    assert client.get(f"/v1/jobs/{job['id']}/results?cursor=abc").status_code == 400
    assert client.get(f"/v1/jobs/{job['id']}/results?format=xml").status_code == 400


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok", "blob_store": "ok"}


def test_readiness_is_503_when_redis_is_unreachable(app_config):
    from api import create_app
    from devtools.embedded_redis import free_port

    client = create_app(
        {**app_config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    ).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"].startswith("unreachable")


def test_submit_with_redis_down_is_503_and_keeps_nothing(app_config, api_key):
    """With Redis unreachable the scan quota cannot be checked: nothing is accepted."""
    from api import create_app
    from devtools.embedded_redis import free_port

    before = row_counts(app_config["DATABASE_URL"])
    client = authorised(
        create_app({**app_config, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}).test_client(),
        api_key,
    )
    response = client.post(
        "/v1/jobs", data=files(("a.png", png_bytes(16))), content_type="multipart/form-data"
    )
    assert response.status_code == 503
    assert "Redis" in response.get_json()["detail"]
    assert row_counts(app_config["DATABASE_URL"]) == before
    assert blob_files(app_config) == []


def test_wakeups_redis_refuses_after_the_commit_wait_in_the_outbox(app, app_config, api_key):
    """A Redis error after the commit (here MISCONF, a full disk) loses nothing: the job is
    accepted and its wake-ups stay in SQL until a relay sends them."""
    from redis.exceptions import ResponseError

    from api.extensions import Services
    from db.outbox import pending_wakeups

    def refuse(tasks):
        raise ResponseError(
            "MISCONF Redis is configured to save RDB snapshots, but it's "
            "currently unable to persist to disk"
        )

    services: Services = app.extensions["covidscan"]
    services.send_wakeups = refuse
    client = authorised(app.test_client(), api_key)
    response = client.post(
        "/v1/jobs", data=files(("a.png", png_bytes(16))), content_type="multipart/form-data"
    )
    assert response.status_code == 202
    assert response.get_json()["counts"]["queued"] == 1
    engine = create_engine(app_config["DATABASE_URL"])
    with Session(engine) as session:
        assert pending_wakeups(session) == 1
    engine.dispose()


def test_a_job_may_ask_for_a_precision_and_a_priority(client, app_config):
    slices = [(f"p{i}.png", png_bytes(32, seed=i)) for i in range(9)]
    response = client.post(
        "/v1/jobs",
        data={**files(*slices), "precision": "BF16", "priority": "High"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    assert response.get_json()["priority"] == "high"
    engine = create_engine(app_config["DATABASE_URL"])
    with Session(engine) as session:
        job = session.get(Job, response.get_json()["id"])
        assert (job.precision, job.priority) == ("bf16", 0)
        assert {scan.priority for scan in job.scans} == {0}
    engine.dispose()
    bad = client.post(
        "/v1/jobs",
        data={**files(("a.png", png_bytes(32))), "priority": "urgent"},
        content_type="multipart/form-data",
    )
    assert bad.status_code == 400
    assert "priority must be one of high, normal, low" in bad.get_json()["detail"]


def test_an_unknown_precision_is_400_and_keeps_nothing(client, app_config):
    before = row_counts(app_config["DATABASE_URL"])
    response = client.post(
        "/v1/jobs",
        data={**files(("a.png", png_bytes(32))), "precision": "int4"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert (
        "precision must be one of fp32, bf16, fp16, int8, auto, got 'int4'"
        in response.get_json()["detail"]
    )
    assert row_counts(app_config["DATABASE_URL"]) == before


def test_a_folder_of_more_than_a_thousand_slices_is_one_job(client):
    """One multipart part per slice, as `covidscan submit FOLDER` sends them."""
    tiny = png_bytes(8)
    slices = [(f"s{i:04d}.png", tiny) for i in range(1100)]
    response = client.post("/v1/jobs", data=files(*slices), content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["counts"]["total"] == 1100

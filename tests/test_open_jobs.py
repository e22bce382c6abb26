"""Open jobs: one job's scans sent in several requests, classified while the rest is sent,
ended only once sealed. Against a real Redis and database; the first test with the
session's real worker."""

import io
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from api.schemas import SubmissionOptions
from cli.client import ApiError, Client
from db.models import AuditEvent, Job, Scan
from db.session import make_engine, make_session_factory
from tests.conftest import authorised, create_api_key, keyed_test_clients, wait_for_job
from tests.images import png_bytes, write_folder, zip_bytes

pytestmark = pytest.mark.integration


def files(*items):
    return {"files": [(io.BytesIO(data), name) for name, data in items]}


def slices(prefix, count, seed=0):
    return [(f"{prefix}_{i:02d}.png", png_bytes(48, seed=seed + i)) for i in range(count)]


def post(client, route, items=(), **form):
    return client.post(route, data={**files(*items), **form}, content_type="multipart/form-data")


def open_job(client, items=(), **form):
    response = post(client, "/v1/jobs", items, open="true", **form)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def add(client, job_id, items, expect=202):
    response = post(client, f"/v1/jobs/{job_id}/scans", items)
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def scan_rows(database_url, job_id):
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(
                session.scalars(select(Scan).where(Scan.job_id == job_id).order_by(Scan.position))
            )
    finally:
        engine.dispose()


def test_an_open_job_is_classified_part_by_part_and_ends_only_once_sealed(
    stack_client, stack_config
):
    job = open_job(stack_client, slices("first", 4))
    assert job["status"] == "open" and job["open_until"] and job["counts"]["total"] == 4
    deadline = time.monotonic() + 120
    while (body := stack_client.get(f"/v1/jobs/{job['id']}").get_json())["counts"]["succeeded"] < 4:
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    assert body["status"] == "open" and body["finished_at"] is None  # done, but not ended

    second = add(stack_client, job["id"], [("part2.zip", zip_bytes(slices("second", 3, 10)))])
    assert second["counts"]["total"] == 7 and second["status"] == "open"
    sealed = stack_client.post(f"/v1/jobs/{job['id']}/seal")
    assert sealed.status_code == 200 and sealed.get_json()["open_until"] is None
    final = wait_for_job(stack_client, job["id"])
    assert final["status"] == "succeeded" and final["counts"]["succeeded"] == 7
    rows = scan_rows(stack_config["DATABASE_URL"], job["id"])
    assert [r.filename for r in rows] == [f"first_{i:02d}.png" for i in range(4)] + [
        f"second_{i:02d}.png" for i in range(3)
    ]
    assert [r.position for r in rows] == list(range(7))
    assert all(r.result_writes == 1 for r in rows)

    late = add(stack_client, job["id"], slices("late", 1), expect=409)
    assert "sealed" in late["detail"]
    assert stack_client.post(f"/v1/jobs/{job['id']}/seal").status_code == 200  # idempotent


def test_a_refused_part_leaves_nothing_and_the_parts_before_it_stay(client, app_config):
    job = open_job(client, slices("kept", 2))
    blob_dir = Path(app_config["BLOB_DIR"]) / job["id"]
    before = sorted(p.name for p in blob_dir.iterdir())
    refused = add(
        client, job["id"], slices("new", 3) + [("notes.png", b"not an image")], expect=415
    )
    assert "notes.png" in refused["detail"]
    assert sorted(p.name for p in blob_dir.iterdir()) == before
    empty = post(client, f"/v1/jobs/{job['id']}/scans")
    assert empty.status_code == 400 and "no files" in empty.get_json()["detail"]
    body = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert body["counts"]["total"] == 2 and body["status"] == "open"
    assert [r.filename for r in scan_rows(app_config["DATABASE_URL"], job["id"])] == [
        "kept_00.png",
        "kept_01.png",
    ]


def test_every_part_of_an_open_job_asked_to_explain_is_explained(client, app_config):
    from db.models import Explanation

    job = open_job(client, slices("a", 2), explain="gradcam")
    add(client, job["id"], slices("b", 3))
    engine = make_engine(app_config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            explained = set(
                session.scalars(select(Explanation.scan_id).where(Explanation.job_id == job["id"]))
            )
            scans = set(session.scalars(select(Scan.id).where(Scan.job_id == job["id"])))
    finally:
        engine.dispose()
    assert len(scans) == 5 and explained == scans


def test_an_empty_open_job_cannot_be_sealed_and_a_cancelled_one_takes_no_parts(client):
    job = open_job(client)
    assert job["counts"]["total"] == 0 and job["status"] == "open"
    refused = client.post(f"/v1/jobs/{job['id']}/seal")
    assert refused.status_code == 409 and "holds no scans" in refused.get_json()["detail"]
    add(client, job["id"], slices("a", 1))
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["open_until"] is None
    assert "cancelled" in add(client, job["id"], slices("b", 1), expect=409)["detail"]


def test_a_job_is_open_only_when_asked_and_another_owner_cannot_add_to_it(client, app, app_config):
    plain = post(client, "/v1/jobs", slices("p", 1))
    assert plain.status_code == 202 and plain.get_json()["status"] == "queued"
    assert add(client, plain.get_json()["id"], slices("q", 1), expect=409)
    assert post(client, "/v1/jobs", open="maybe").status_code == 400
    job = open_job(client, slices("mine", 1))
    other = authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], owner="mallory")
    )
    assert add(other, job["id"], slices("theirs", 1), expect=404)
    assert other.post(f"/v1/jobs/{job['id']}/seal").status_code == 404


@pytest.fixture
def small_jobs_config(app_config):
    return {**app_config, "MAX_SCANS_PER_JOB": "6"}


def test_parts_sent_at_once_get_one_position_each_and_respect_the_job_limit(
    small_jobs_config, api_key
):
    from api import create_app

    app = keyed_test_clients(create_app(small_jobs_config), api_key)
    job = open_job(app.test_client(), slices("p0", 1))
    answers = []

    def send(n):
        answers.append(
            post(
                app.test_client(), f"/v1/jobs/{job['id']}/scans", slices(f"p{n}", 2, seed=10 * n)
            ).status_code
        )

    threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 1 + 2 + 2 = 5 fit under 6; a third part of 2 would make 7.
    assert sorted(answers) == [202, 202, 413, 413]
    rows = scan_rows(small_jobs_config["DATABASE_URL"], job["id"])
    assert [r.position for r in rows] == list(range(5))
    blob_dir = Path(small_jobs_config["BLOB_DIR"]) / job["id"]
    assert sorted(p.name for p in blob_dir.iterdir()) == sorted(
        Path(r.blob_key).name for r in rows
    )  # the refused parts left no file


def test_the_sweep_seals_a_lapsed_job_and_deletes_a_lapsed_empty_one(app_config, api_key):
    from api import create_app
    from core.sweep import sweep_once
    from covidscan.settings import load_settings
    from db.blobs import FileBlobStore

    config = {**app_config, "OPEN_JOB_TIMEOUT": "1"}
    client = authorised(create_app(config).test_client(), api_key)
    kept = open_job(client, slices("k", 2))
    empty = open_job(client)
    engine = make_engine(config["DATABASE_URL"])
    sessions = make_session_factory(engine)
    settings = load_settings(config)
    try:
        early = sweep_once(
            sessions, FileBlobStore(Path(config["BLOB_DIR"])), lambda n: None, settings
        )
        assert early.jobs_sealed == 0
        time.sleep(1.2)
        report = sweep_once(
            sessions, FileBlobStore(Path(config["BLOB_DIR"])), lambda n: None, settings
        )
        assert report.jobs_sealed == 1
        with sessions() as session:
            assert session.get(Job, kept["id"]).open_until is None
            assert session.get(Job, empty["id"]) is None
    finally:
        engine.dispose()
    assert client.get(f"/v1/jobs/{kept['id']}").get_json()["status"] == "queued"
    assert "sealed" in add(client, kept["id"], slices("late", 1), expect=409)["detail"]


def test_the_client_sends_a_large_upload_in_parts_as_one_job(server, tmp_path):
    url, key, database_url = server
    write_folder(tmp_path / "slices", 7, size=32)
    client = Client(url, api_key=key, part_files=3)
    job = client.submit(sorted((tmp_path / "slices").iterdir()), SubmissionOptions(name="parts"))
    assert job["counts"]["total"] == 7 and job["open_until"] is None
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        actions = list(
            session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.job_id == job["id"])
                .order_by(AuditEvent.id)
            )
        )
    engine.dispose()
    assert actions == ["job.submit", "job.add_scans", "job.add_scans", "job.seal"]

    (tmp_path / "slices" / "zz_notes.png").write_text("not an image")
    with pytest.raises(ApiError) as refused:
        client.submit(sorted((tmp_path / "slices").iterdir()))
    assert refused.value.status == 415 and "zz_notes.png" in refused.value.detail
    assert "was deleted" in refused.value.detail
    left = refused.value.detail.split("job ")[1].split()[0]
    with pytest.raises(ApiError) as gone:
        client.job(left)
    assert gone.value.status == 404


def test_the_client_says_so_when_the_refused_uploads_job_could_not_be_deleted(server, tmp_path):
    url, key, _ = server

    class BusyServer(Client):  # every DELETE answered like a server in trouble
        deletes = 0

        def delete(self, job_id):
            BusyServer.deletes += 1
            raise ApiError(503, "the database is not answering")

    write_folder(tmp_path / "slices", 4, size=32)
    (tmp_path / "slices" / "zz_notes.png").write_text("not an image")
    with pytest.raises(ApiError) as refused:
        BusyServer(url, api_key=key, part_files=3).submit(sorted((tmp_path / "slices").iterdir()))
    detail = refused.value.detail
    assert refused.value.status == 415 and "zz_notes.png" in detail
    assert "was deleted" not in detail and "could not be deleted" in detail
    assert "the database is not answering" in detail and BusyServer.deletes == 3
    left = detail.split("job ")[1].split()[0]
    assert f"covidscan delete {left}" in detail
    client = Client(url, api_key=key)
    assert client.job(left)["counts"]["total"] == 3  # the first part is there, as it says
    client.delete(left)


@pytest.fixture
def server(app_config, api_key):
    """The API over HTTP (no worker)."""
    from werkzeug.serving import make_server

    from api import create_app

    http = make_server("127.0.0.1", 0, create_app(app_config), threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.port}", api_key, app_config["DATABASE_URL"]
    http.shutdown()

"""The two-step upload against a real S3 server: presigned PUTs, then a start step that
checks every slice's header from the store (no worker: jobs stay queued)."""

import uuid

import pytest
import requests

from api import create_app
from tests.conftest import authorised, create_api_key
from tests.hostile_files import html_as_png, png_header_only, zip_of
from tests.images import png_bytes
from tests.test_end_to_end import stored_keys

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_config(app_config, s3_server):
    return {**app_config, **s3_server.env(prefix=f"direct-{uuid.uuid4().hex[:8]}")}


@pytest.fixture
def s3_client(s3_config):
    key = create_api_key(s3_config["DATABASE_URL"], owner=f"carol-{uuid.uuid4().hex[:6]}")
    return authorised(create_app(s3_config).test_client(), key)


def create(client, items, **fields):
    body = {"files": [{"filename": name, "size": len(data)} for name, data in items], **fields}
    return client.post("/v1/jobs", json=body)


def put_all(created, items):
    for part, (name, data) in zip(created["parts"], items):
        assert part["filename"] == name and part["method"] == "PUT"
        assert (
            requests.put(part["url"], data=data, headers=part["headers"], timeout=10).status_code
            == 200
        )


def test_create_upload_start_then_start_again_answers_the_same_job(s3_client, s3_config):
    items = [(f"s{i}.png", png_bytes(40, seed=i)) for i in range(3)]
    response = create(s3_client, items, name="direct", priority="high")
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["status"] == "awaiting_upload" and len(created["parts"]) == 3
    job_id = created["id"]
    assert s3_client.get(f"/v1/jobs/{job_id}").status_code == 404  # nothing to lease yet
    put_all(created, items)
    started = s3_client.post(created["start_url"])
    assert started.status_code == 202, started.get_json()
    job = started.get_json()
    assert (job["id"], job["name"], job["priority"]) == (job_id, "direct", "high")
    assert job["counts"]["total"] == job["counts"]["queued"] == 3
    assert stored_keys(s3_config, job_id) == [f"{job_id}/{i:06d}" for i in range(3)]
    again = s3_client.post(created["start_url"])
    assert again.status_code == 200 and again.get_json()["counts"]["total"] == 3
    rows = s3_client.get(f"/v1/jobs/{job_id}/results").get_json()["results"]
    assert [r["filename"] for r in rows] == ["s0.png", "s1.png", "s2.png"]


def test_start_before_every_slice_is_uploaded_names_the_missing_ones(s3_client):
    items = [("a.png", png_bytes(24)), ("b.png", png_bytes(24, seed=1))]
    created = create(s3_client, items).get_json()
    put_all({"parts": created["parts"][:1]}, items[:1])
    response = s3_client.post(created["start_url"])
    assert response.status_code == 409
    assert response.get_json()["missing"] == ["b.png"]
    put_all({"parts": created["parts"][1:]}, items[1:])
    assert s3_client.post(created["start_url"]).status_code == 202


def test_hostile_slices_are_refused_at_start_naming_each_and_nothing_is_kept(s3_client, s3_config):
    items = [
        ("good.png", png_bytes(24)),
        ("huge.png", png_header_only(30000, 30000)),
        ("page.png", html_as_png()),
        ("inner.png", zip_of([("x.png", png_bytes(8))])),
    ]
    created = create(s3_client, items).get_json()
    put_all(created, items)
    response = s3_client.post(created["start_url"])
    problem = response.get_json()
    assert response.status_code == 413, problem
    refused = {r["filename"]: r["status"] for r in problem["refused"]}
    assert refused == {"huge.png": 413, "page.png": 415, "inner.png": 415}
    assert "30000×30000" in problem["detail"] and "page.png" in problem["detail"]
    assert stored_keys(s3_config, created["id"]) == []
    assert s3_client.post(created["start_url"]).status_code == 404


@pytest.mark.parametrize(
    "files, status, words",
    [
        ([], 400, "non-empty"),
        ([{"filename": "a.png", "size": 10**12}], 413, "MAX_SCAN_BYTES"),
        ([{"filename": "a.png", "size": 0}], 400, "empty"),
        ([{"filename": "a.png", "size": "10"}], 400, "whole number"),
        ([{"filename": "a\x00.png", "size": 10}], 400, "NUL"),
    ],
)
def test_bad_declarations_are_refused_before_any_url_is_made(s3_client, files, status, words):
    response = s3_client.post("/v1/jobs", json={"files": files})
    assert response.status_code == status, response.get_json()
    assert words in response.get_json()["detail"]


def test_a_url_takes_only_the_declared_size_and_another_owner_cannot_start(s3_client, s3_config):
    items = [("a.png", png_bytes(24))]
    created = create(s3_client, items).get_json()
    (part,) = created["parts"]
    assert requests.put(part["url"], data=items[0][1] + b"more", timeout=10).status_code == 403
    other = authorised(
        create_app(s3_config).test_client(),
        create_api_key(s3_config["DATABASE_URL"], owner="mallory"),
    )
    assert other.post(created["start_url"]).status_code == 404
    assert "Authorization" not in part["headers"]


def test_a_client_that_cannot_reach_the_store_falls_back_to_one_request(s3_config, tmp_path):
    import threading

    from werkzeug.serving import make_server

    from cli.client import Client
    from tests.images import write_folder

    config = dict(s3_config, S3_PUBLIC_ENDPOINT_URL="http://127.0.0.1:9")  # nothing listens
    key = create_api_key(config["DATABASE_URL"], owner="dave")
    server = make_server("127.0.0.1", 0, create_app(config), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.port}", timeout=30, api_key=key)
        job = client.submit(write_folder(tmp_path / "slices", 2, size=24))
    finally:
        server.shutdown()
    assert job["status"] == "queued" and job["counts"]["total"] == 2
    assert stored_keys(s3_config, job["id"]) == [f"{job['id']}/{i:06d}" for i in range(2)]

"""One contract, two blob stores: a folder and a real S3 server (SeaweedFS)."""

import uuid

import pytest
import requests

from core.sweep import delete_orphan_blobs
from covidscan.settings import ConfigError, load_settings
from db.blobs import BlobNotFound, FileBlobStore, open_blob_store
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.integration


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return FileBlobStore(tmp_path / "blobs")
    s3 = request.getfixturevalue("s3_server")
    settings = load_settings(s3.env(prefix=f"contract-{uuid.uuid4().hex[:8]}"))
    return open_blob_store(settings.blob_dir, settings.blob_store)


def test_put_get_size_and_a_prefix_of_the_bytes(store):
    key = store.key_for("job1", 7)
    assert key == "job1/000007"
    store.put(key, b"0123456789")
    store.put(key + ".thumb.jpg", b"thumb")
    assert store.get(key) == b"0123456789" and store.get(key, 4) == b"0123"
    assert store.size(key) == 10
    store.put(key, b"new")  # replaced whole
    assert store.get(key) == b"new" and store.keys("job1") == [key, key + ".thumb.jpg"]
    store.delete(key + ".thumb.jpg")
    store.delete(key + ".thumb.jpg")  # a missing key is not an error
    assert store.keys("job1") == [key]


def test_missing_keys_raise_blob_not_found_naming_the_key(store):
    with pytest.raises(BlobNotFound, match="nojob/000000"):
        store.get("nojob/000000")
    with pytest.raises(BlobNotFound, match="nojob/000001"):
        store.size("nojob/000001")


@pytest.mark.parametrize("key", ["../other/000000", "/etc/passwd", "job/../../x", ""])
def test_keys_cannot_leave_the_store(store, key):
    with pytest.raises(ValueError, match="escapes"):
        store.put(key, b"x")


def test_deleting_a_job_deletes_every_key_under_it_and_nothing_else(store):
    for i in range(3):
        store.put(store.key_for("gone", i), b"x")
    store.put("kept/000000", b"y")
    store.delete_job("gone")
    assert store.keys("gone") == [] and store.keys("kept") == ["kept/000000"]
    assert store.job_ids_older_than(0) == ["kept"]
    assert store.job_ids_older_than(3600) == []  # written just now: within any grace


def test_the_sweep_deletes_orphan_blobs_but_not_a_jobs(store, database_url):
    from db.jobs import NewScan, create_job

    sessions = make_session_factory(make_engine(database_url))
    with sessions.begin() as session:
        job = create_job(session, [NewScan("a.png", "x/000000", 1)], "realjob")
    store.put(f"{job.id}/000000", b"x")
    store.put("orphan/000000", b"x")
    assert delete_orphan_blobs(sessions, store, grace_seconds=0) == 1
    assert store.keys("orphan") == [] and store.keys(job.id) == [f"{job.id}/000000"]


def test_only_the_s3_store_offers_presigned_uploads_of_the_size_signed(store):
    url = store.upload_url("up/000000", 5, 60)
    if isinstance(store, FileBlobStore):
        assert url is None
        return
    assert requests.put(url, data=b"12345", timeout=10).status_code == 200
    assert store.get("up/000000") == b"12345"
    too_long = store.upload_url("up/000001", 5, 60)
    assert requests.put(too_long, data=b"1234567890", timeout=10).status_code == 403
    assert store.keys("up") == ["up/000000"]


@pytest.mark.parametrize(
    "env, named",
    [
        ({"BLOB_STORE": "gs://bucket/x"}, "BLOB_STORE"),
        ({"BLOB_STORE": "s3://Bad_Bucket"}, "BLOB_STORE"),
        ({"BLOB_STORE": "s3://scans/a/../b"}, "BLOB_STORE"),
        ({"BLOB_STORE": "s3://scans", "AWS_ACCESS_KEY_ID": "k"}, "AWS_SECRET_ACCESS_KEY"),
        ({"BLOB_STORE": "s3://scans", "S3_ENDPOINT_URL": "seaweedfs:8333"}, "S3_ENDPOINT_URL"),
        ({"S3_PUBLIC_ENDPOINT_URL": "ftp://x"}, "S3_PUBLIC_ENDPOINT_URL"),
    ],
)
def test_bad_s3_settings_stop_start_up_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_s3_settings_and_the_secret_stays_out_of_repr():
    settings = load_settings(
        {
            "BLOB_STORE": "s3://scans/covidscan/",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
            "AWS_REGION": "eu-west-1",
            "S3_ENDPOINT_URL": "http://seaweedfs:8333/",
        }
    )
    location = settings.blob_store
    assert (location.bucket, location.prefix, location.region) == (
        "scans",
        "covidscan/",
        "eu-west-1",
    )
    assert location.endpoint_url == location.public_endpoint_url == "http://seaweedfs:8333"
    assert "s3cr3t" not in repr(settings)
    assert load_settings({}).blob_store is None


@pytest.mark.integration
def test_readyz_checks_the_object_store_and_names_it_when_it_does_not_answer(app_config, s3_server):
    from api import create_app
    from devtools.embedded_redis import free_port

    ready = create_app({**app_config, **s3_server.env()}).test_client().get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["blob_store"] == "ok"
    missing = {**app_config, **s3_server.env(), "BLOB_STORE": "s3://no-such-bucket-here/x"}
    answer = create_app(missing).test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["blob_store"].startswith("s3://no-such-bucket-here/x/")
    away = {**app_config, **s3_server.env(), "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    answer = create_app(away).test_client().get("/readyz")
    assert answer.status_code == 503
    detail = answer.get_json()["checks"]["blob_store"]
    assert "unreachable" in detail and s3_server.secret_key not in detail
    assert answer.get_json()["checks"]["database"] == "ok"


def test_the_embedded_s3_starts_on_other_ports_when_one_picked_for_it_is_taken(tmp_path):
    """A port picked free can be taken by another process before SeaweedFS binds it."""
    import socket

    from devtools.embedded_s3 import EmbeddedS3

    s3 = EmbeddedS3(tmp_path / "s3")
    taken = s3.ports["s3.grpc"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        s3.start()
        try:
            assert s3.ports["s3.grpc"] != taken
            assert "address already in use" not in (tmp_path / "s3" / "weed.log").read_text()
            assert requests.get(s3.endpoint_url, timeout=10).status_code < 500
        finally:
            s3.stop()

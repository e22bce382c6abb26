"""The end-to-end tests again, with the blobs in a real S3 server (SeaweedFS), served by a
worker that shares nothing with the API but the database, Redis and the object store:
its own working directory, no BLOB_DIR, no access to the API's folders."""

import os
from pathlib import Path

import pytest

from tests import test_cli, test_models_cli
from tests import test_end_to_end as e2e
from tests.conftest import ROOT, WorkerProcess, create_api_key, fresh_database_url, wait_for_job
from tests.images import png_bytes, write_folder, zip_bytes
from tests.test_end_to_end import stored_keys, upload

# Every end-to-end test of the filesystem store, collected here again against S3.
for _name in dir(e2e):
    if _name.startswith("test_"):
        globals()[_name] = getattr(e2e, _name)

pytestmark = pytest.mark.integration

API_ONLY = (
    "BLOB_DIR",
    "BLOB_STORE",
    "MODEL_PATH",
    "MODEL_STORE_DIR",
    "ENGINE_CACHE_DIR",
    "DATABASE_URL",
    "COVIDSCAN_VAR_DIR",
)


@pytest.fixture(scope="module")
def stack_config(tmp_path_factory, redis_server, s3_server):
    """The API's settings: the S3 store; its own BLOB_DIR must stay unused. Redis database
    2: the session's worker (database 0) must not take this stack's wake-ups."""
    base = tmp_path_factory.mktemp("api-s3")
    return {
        "DATABASE_URL": fresh_database_url(base),
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/2",
        "BLOB_DIR": str(base / "blobs"),
        "MODEL_STORE_DIR": str(base / "models"),
        "BATCH_SIZE": "8",
        **s3_server.env(prefix=f"e2e-{base.name}"),
    }


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote-worker")


@pytest.fixture(scope="module")
def worker(stack_config, tiny_model_path, worker_home):
    """A worker started elsewhere: DATABASE_URL, REDIS_URL and the S3 settings only."""
    env = {k: v for k, v in os.environ.items() if k not in API_ONLY}
    env.update(
        {
            k: stack_config[k]
            for k in (
                "DATABASE_URL",
                "REDIS_URL",
                "BATCH_SIZE",
                "BLOB_STORE",
                "S3_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            )
        }
    )
    env.update(MODEL_PATH=str(tiny_model_path), PYTHONPATH=str(ROOT))
    process = WorkerProcess(
        env, worker_home / "worker.log", name="remote-worker@%h", cwd=worker_home
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stack_key(stack_config):
    return create_api_key(stack_config["DATABASE_URL"], owner="stack-s3")


def test_a_worker_with_only_the_database_redis_and_s3_classifies_a_job(
    stack_client, stack_config, worker, worker_home
):
    pid = worker.process.pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith((b"BLOB_DIR=", b"MODEL_STORE_DIR="))]
    assert Path(os.readlink(f"/proc/{pid}/cwd")) == worker_home
    job = upload(stack_client, [(f"w{i}.png", png_bytes(48, seed=70 + i)) for i in range(3)])
    final = wait_for_job(stack_client, job["id"])
    assert final["status"] == "succeeded" and final["counts"]["succeeded"] == 3
    assert stored_keys(stack_config, job["id"]) == [f"{job['id']}/{i:06d}" for i in range(3)]
    # Nothing went through a folder: the API's BLOB_DIR was never made, nor a worker's own.
    assert not Path(stack_config["BLOB_DIR"]).exists()
    assert not (worker_home / "var" / "blobs").exists()
    assert "remote-worker@" in Path(worker.log_path).read_text()


def test_a_model_added_with_the_cli_reaches_a_worker_through_the_bucket(
    stack_client, stack_config, worker, worker_home, tmp_path
):
    """Registered on the API's host (its own MODEL_STORE_DIR), served by the worker, whose
    store never had it: fetched from the bucket, checked against the registry's SHA-256."""
    from tests.models import save_tiny_h5

    model_file = save_tiny_h5(tmp_path / "remote_ct.h5", seed=8)
    added = test_models_cli.run(
        stack_config, "models", "add", str(model_file), "--name", "remote", "--version", "1"
    )
    assert added.exit_code == 0, added.output
    fetched = worker_home / "var" / "models" / "remote" / "1" / "remote_ct.h5"
    assert not fetched.parent.exists()
    job = upload(
        stack_client,
        [(f"m{i}.png", png_bytes(48, seed=90 + i)) for i in range(2)],
        model="remote:1",
    )
    final = wait_for_job(stack_client, job["id"])
    assert final["status"] == "succeeded" and final["counts"]["succeeded"] == 2
    assert (final["model"]["name"], final["model"]["version"]) == ("remote", "1")
    assert fetched.read_bytes() == model_file.read_bytes()
    assert "fetched model remote/1/remote_ct.h5" in Path(worker.log_path).read_text()


server_url = test_cli.server_url  # the API over HTTP, in front of this module's S3 stack


def audited_actions(stack_config, job_id):
    from sqlalchemy import create_engine, select

    from db.models import AuditEvent

    engine = create_engine(stack_config["DATABASE_URL"])
    with engine.connect() as conn:
        actions = conn.scalars(
            select(AuditEvent.action).where(AuditEvent.job_id == job_id).order_by(AuditEvent.id)
        ).all()
    engine.dispose()
    return actions


def test_the_cli_sends_slices_straight_to_the_store_and_zips_through_the_api(
    server_url, tmp_path, stack_config
):
    write_folder(tmp_path / "slices", 6, size=48, corrupt=1)
    result = test_cli.run(server_url, "submit", str(tmp_path / "slices"), "--wait", "--poll", "0.2")
    assert result.exit_code == 0, result.output
    assert "6 succeeded, 1 failed of 7" in result.output
    job_id = result.output.split()[1].rstrip(":")
    assert audited_actions(stack_config, job_id)[:2] == ["job.upload_urls", "job.submit"]
    archive = tmp_path / "all.zip"
    archive.write_bytes(zip_bytes([("z.png", png_bytes(32))]))
    zipped = test_cli.run(server_url, "submit", str(archive), "--wait", "--poll", "0.2")
    assert zipped.exit_code == 0, zipped.output
    zip_job = zipped.output.split()[1].rstrip(":")
    assert audited_actions(stack_config, zip_job)[0] == "job.submit"  # one multipart request

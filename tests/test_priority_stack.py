"""Through a real worker: priority is taken from SQL, and SIGTERM stops a worker cleanly."""

import io
import signal
import time

import pytest
from sqlalchemy import create_engine, func, select

from db.models import Scan, ScanStatus
from devtools.embedded_redis import EmbeddedRedis
from tests.conftest import (
    WorkerProcess,
    authorised,
    create_api_key,
    fresh_database_url,
    wait_for_job,
    worker_env,
)
from tests.images import png_bytes, zip_bytes

pytestmark = pytest.mark.integration

LOW_SCANS = 600


def submit(client, count, priority, seed=0):
    archive = zip_bytes((f"s{i:04d}.png", png_bytes(32, seed=seed + i)) for i in range(count))
    response = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(archive), "slices.zip")], "priority": priority},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def unfinished(engine, job_id):
    with engine.connect() as conn:
        return conn.scalar(
            select(func.count()).where(
                Scan.job_id == job_id, Scan.status.in_([ScanStatus.QUEUED, ScanStatus.RUNNING])
            )
        )


def test_a_high_job_overtakes_a_waiting_low_one_and_sigterm_gives_leases_back(
    tmp_path, tiny_model_path
):
    from api import create_app

    with EmbeddedRedis(tmp_path / "redis", persist=False) as redis_server:
        config = {
            "DATABASE_URL": fresh_database_url(tmp_path),
            "REDIS_URL": redis_server.url,
            "BLOB_DIR": str(tmp_path / "blobs"),
            "BATCH_SIZE": "4",
        }
        client = authorised(
            create_app(config).test_client(), create_api_key(config["DATABASE_URL"])
        )
        # The worker is not running yet: both jobs wait, the low one queued first.
        low = submit(client, LOW_SCANS, "low")
        high = submit(client, 4, "high", seed=5000)
        sql = create_engine(config["DATABASE_URL"])
        worker = WorkerProcess(
            worker_env(config, MODEL_PATH=str(tiny_model_path), MAX_BATCH_SIZE="4"),
            tmp_path / "worker.log",
            name="priority@%h",
        )
        try:
            worker.wait_ready()
            assert wait_for_job(client, high, timeout=120)["status"] == "succeeded"
            with sql.connect() as conn:
                high_done = conn.scalar(
                    select(func.max(Scan.finished_at)).where(Scan.job_id == high)
                )
                low_before_high = conn.scalar(
                    select(func.count()).where(Scan.job_id == low, Scan.finished_at <= high_done)
                )
            deadline = time.monotonic() + 60
            while unfinished(sql, low) > LOW_SCANS // 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            worker.process.send_signal(signal.SIGTERM)
            code = worker.process.wait(60)
            with sql.connect() as conn:
                states = dict(
                    conn.execute(
                        select(Scan.status, func.count())
                        .where(Scan.job_id == low)
                        .group_by(Scan.status)
                    ).all()
                )
                owners = conn.scalar(select(func.count()).where(Scan.lease_owner.is_not(None)))
        finally:
            worker.stop()
            sql.dispose()
    # Strict priority: the high job ran first although the low one was queued before it;
    # at most the two claims of BATCH_SIZE a worker holds at once overlap it.
    assert low_before_high <= 8, low_before_high
    # SIGTERM: the batch in hand finished, nothing else was taken, no lease is left behind.
    assert code == 0
    assert states.get("running", 0) == 0 and owners == 0, states
    assert states.get("queued", 0) > 0 and states.get("succeeded", 0) > 0, states

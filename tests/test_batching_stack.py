"""Through a real worker: many one-slice jobs share model batches."""

import io
import time

import pytest
from celery import Celery
from sqlalchemy import create_engine, func, select

from covidscan.contract import BATCHING_STATS_COMMAND
from db.models import Scan, ScanStatus
from devtools.embedded_redis import EmbeddedRedis
from tests.conftest import WorkerProcess, authorised, create_api_key, fresh_database_url, worker_env
from tests.images import png_bytes

pytestmark = pytest.mark.integration
JOBS, MAX_BATCH = 100, 16


def batching_stats(redis_url: str) -> dict:
    control = Celery("stats", broker=redis_url, set_as_current=False)
    replies = control.control.broadcast(BATCHING_STATS_COMMAND, reply=True, timeout=10, limit=1)
    (reply,) = replies
    (stats,) = reply.values()
    return stats


def wait_until_done(database_url: str, total: int, timeout: float = 180) -> int:
    engine = create_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                done = conn.scalar(
                    select(func.count())
                    .select_from(Scan)
                    .where(Scan.status == ScanStatus.SUCCEEDED)
                )
            if done == total:
                return done
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"{done} of {total} scans done after {timeout}s")


def test_a_hundred_one_slice_jobs_are_inferred_in_near_full_batches(tiny_model_path, tmp_path):
    from api import create_app

    with EmbeddedRedis(tmp_path / "redis", persist=False) as redis_server:
        config = {
            "DATABASE_URL": fresh_database_url(tmp_path),
            "REDIS_URL": redis_server.url,
            "BLOB_DIR": str(tmp_path / "blobs"),
            "ENGINE_CACHE_DIR": str(tmp_path / "cache"),
        }
        client = authorised(
            create_app(config).test_client(), create_api_key(config["DATABASE_URL"])
        )
        for i in range(JOBS):  # all queued before any worker runs: they arrive at once
            response = client.post(
                "/v1/jobs",
                data={"files": [(io.BytesIO(png_bytes(48, i)), f"one_{i}.png")]},
                content_type="multipart/form-data",
            )
            assert response.status_code == 202
        env = worker_env(
            config,
            MODEL_PATH=str(tiny_model_path),
            MAX_BATCH_SIZE=str(MAX_BATCH),
            MAX_QUEUE_DELAY_MS="500",
            WORKER_CONCURRENCY=str(2 * MAX_BATCH),
        )
        worker = WorkerProcess(env, tmp_path / "worker.log", name="batching@%h")
        try:
            worker.wait_ready()
            assert wait_until_done(config["DATABASE_URL"], JOBS) == JOBS
            stats = batching_stats(redis_server.url)
        finally:
            worker.stop()
    assert stats["items"] == JOBS, stats
    assert stats["max_batch_size"] == MAX_BATCH
    sizes = {int(size): count for size, count in stats["sizes"].items()}
    assert max(sizes) == MAX_BATCH, stats
    assert stats["mean_batch_size"] >= MAX_BATCH / 2, stats

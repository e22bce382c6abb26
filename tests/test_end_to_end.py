"""Through the real queue: the API, an embedded Redis and a real Celery worker process."""

import io

import pytest
from celery import Celery

from covidscan.contract import INFER_QUEUE, WAKE_TASK
from tests.conftest import wait_for_job
from tests.images import corrupt_png, ct_slice, encode, png_bytes, zip_bytes

pytestmark = pytest.mark.integration


def upload(client, items, **form):
    data = {"files": [(io.BytesIO(d), n) for n, d in items], **form}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def results(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/results?limit=1000").get_json()["results"]


def twenty_and_one_corrupt():
    items = [(f"slice_{i:02d}.png", png_bytes(96, seed=i)) for i in range(20)]
    return items + [("corrupt.png", corrupt_png())]


def test_a_bulk_job_with_one_corrupt_slice_partially_succeeds(stack_client):
    job = upload(stack_client, twenty_and_one_corrupt(), name="e2e")
    final = wait_for_job(stack_client, job["id"])
    assert final["status"] == "partially_succeeded"
    assert final["counts"] == {
        "total": 21,
        "queued": 0,
        "running": 0,
        "succeeded": 20,
        "failed": 1,
        "cancelled": 0,
    }
    assert final["model"]["name"] == "tiny_ct" and final["model"]["trained"] is True
    assert final["started_at"] and final["finished_at"] >= final["started_at"]
    rows = results(stack_client, job["id"])
    good = [r for r in rows if r["status"] == "succeeded"]
    assert len(good) == 20
    for row in good:
        assert 0.0 <= row["probability_covid"] <= 1.0
        assert row["label"] == ("COVID" if row["probability_covid"] >= 0.5 else "NonCOVID")
        assert row["model_sha256"] == final["model"]["sha256"]
        # INFERENCE_ENGINE=auto on a host without a GPU: OpenVINO, in the default fp32.
        assert (row["engine"], row["precision"], row["preprocessing"]) == (
            "openvino",
            "fp32",
            "seed-v1",
        )
    (bad,) = [r for r in rows if r["status"] == "failed"]
    assert bad["filename"] == "corrupt.png" and bad["probability_covid"] is None
    assert "truncated or corrupt" in bad["error"]


def test_a_zip_of_the_same_slices_gives_the_same_results(stack_client):
    items = twenty_and_one_corrupt()
    plain = wait_for_job(stack_client, upload(stack_client, items)["id"])
    zipped = wait_for_job(stack_client, upload(stack_client, [("all.zip", zip_bytes(items))])["id"])
    assert zipped["counts"] == plain["counts"]

    def by_name(rows):
        return {r["filename"]: (r["status"], r["probability_covid"], r["label"]) for r in rows}

    assert by_name(results(stack_client, zipped["id"])) == by_name(
        results(stack_client, plain["id"])
    )


def test_jpeg_and_rgb_slices_are_classified(stack_client):
    items = [
        ("a.jpg", encode(ct_slice(80, 1, "RGB"), "JPEG")),
        ("b.png", encode(ct_slice(700, 2, "RGB"))),
        ("c.jpeg", encode(ct_slice(50, 3), "JPEG")),
    ]
    final = wait_for_job(stack_client, upload(stack_client, items)["id"])
    assert final["status"] == "succeeded" and final["counts"]["succeeded"] == 3


def test_redelivered_wakeups_do_not_duplicate_or_change_results(stack_client, stack_config):
    from sqlalchemy import create_engine, select

    from db.models import Scan

    job = upload(stack_client, [(f"r{i}.png", png_bytes(64, seed=50 + i)) for i in range(5)])
    wait_for_job(stack_client, job["id"])
    before = results(stack_client, job["id"])
    sender = Celery("redeliver", broker=stack_config["REDIS_URL"], set_as_current=False)
    sender.conf.update(task_serializer="json")
    for _ in range(3):
        sender.send_task(WAKE_TASK, queue=INFER_QUEUE)
    # A second, later job proves the worker has consumed the wake-ups sent before it.
    wait_for_job(stack_client, upload(stack_client, [("after.png", png_bytes(32))])["id"])
    after = results(stack_client, job["id"])
    assert after == before and len(after) == 5
    engine = create_engine(stack_config["DATABASE_URL"])
    with engine.connect() as conn:
        writes = conn.scalars(select(Scan.result_writes).where(Scan.job_id == job["id"])).all()
    engine.dispose()
    assert writes == [1] * 5


def stored_keys(stack_config, job_id):
    """The job's keys in the blob store the stack uses (a folder or a bucket)."""
    from covidscan.settings import load_settings
    from db.blobs import open_blob_store

    settings = load_settings(stack_config)
    return open_blob_store(settings.blob_dir, settings.blob_store).keys(job_id)


def test_cancel_and_delete_through_the_api(stack_client, stack_config):
    job = upload(stack_client, [(f"c{i}.png", png_bytes(32, seed=i)) for i in range(3)])
    final = wait_for_job(stack_client, job["id"])
    cancelled = stack_client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "succeeded"  # nothing left to cancel
    (row, *_) = results(stack_client, job["id"])
    assert stack_client.get(f"/v1/scans/{row['scan_id']}/thumbnail").status_code == 200
    keys = stored_keys(stack_config, job["id"])
    assert len(keys) == 4 and any(key.endswith(".thumb.jpg") for key in keys)
    assert stack_client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert stored_keys(stack_config, job["id"]) == []
    assert stack_client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert stack_client.get(f"/v1/jobs/{job['id']}/results").status_code == 404
    assert stack_client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert stack_client.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert final["status"] == "succeeded"

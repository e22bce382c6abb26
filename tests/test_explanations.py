"""Explanations through the real queue: asked for at submission or later, computed by a real
worker, served as PNG and array to their owner only, deleted with their job."""

import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from db.models import Explanation
from db.session import make_engine, make_session_factory
from tests.conftest import authorised, create_api_key, wait_for_job
from tests.images import corrupt_png, png_bytes
from tests.test_end_to_end import upload

pytestmark = pytest.mark.integration


def wait_for_explanation(client, scan_id, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/scans/{scan_id}/explanation").get_json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"explanation of {scan_id} not done in {timeout}s: {body}")


def rows(client, job_id):
    return client.get(f"/v1/jobs/{job_id}/results?limit=1000").get_json()["results"]


def explanation_rows(database_url, job_id):
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(func.count()).where(Explanation.job_id == job_id))
    finally:
        engine.dispose()


def last_conv_layer(model_path) -> str:
    """The layer Grad-CAM should pick in a model file (Keras numbers layer names per process)."""
    from models.gradcam import find_target_layer
    from models.loader import load_model_file

    return find_target_layer(load_model_file(model_path).keras_model)[0].name


def test_a_job_submitted_with_explanations_gets_a_heatmap_per_scan(
    stack_client, stack_config, tiny_model_path
):
    layer = last_conv_layer(tiny_model_path)
    assert layer.startswith("conv2d")
    items = [(f"s{i}.png", png_bytes(96, seed=i)) for i in range(3)] + [("bad.png", corrupt_png())]
    job = upload(stack_client, items, explain="gradcam")
    assert job["explain"] == "gradcam"
    wait_for_job(stack_client, job["id"])
    by_name = {r["filename"]: r for r in rows(stack_client, job["id"])}
    for name in ("s0.png", "s1.png", "s2.png"):
        row = by_name[name]
        body = wait_for_explanation(stack_client, row["scan_id"])
        assert body["status"] == "succeeded", body
        assert (body["method"], body["layer"], body["class_name"], body["score"]) == (
            "gradcam",
            layer,
            "COVID",
            "logit",
        )
        assert body["model"]["name"] == "tiny_ct" and body["model"]["trained"] is True
        assert (body["model"]["engine"], body["model"]["precision"]) == ("tensorflow", "fp32")
        assert body["model"]["sha256"] == row["model_sha256"]
        assert body["probability_covid"] == pytest.approx(row["probability_covid"], abs=1e-4)
        png = stack_client.get(f"/v1/scans/{row['scan_id']}/heatmap")
        assert png.status_code == 200 and png.mimetype == "image/png"
        assert Image.open(io.BytesIO(png.data)).height == 256  # 32×32 scaled up, legend beside
        for view in ("heatmap", "slice"):
            picture = Image.open(
                io.BytesIO(stack_client.get(f"/v1/scans/{row['scan_id']}/heatmap?view={view}").data)
            )
            assert picture.size == (32, 32)
        raw = np.load(
            io.BytesIO(stack_client.get(f"/v1/scans/{row['scan_id']}/heatmap?format=npy").data)
        )
        assert raw.shape == (32, 32) and raw.min() >= 0 and raw.max() <= 1
    bad = wait_for_explanation(stack_client, by_name["bad.png"]["scan_id"])
    assert bad["status"] == "failed" and "no result" in bad["error"]
    assert stack_client.get(f"/v1/scans/{by_name['bad.png']['scan_id']}/heatmap").status_code == 409
    assert {r["explanation"] for r in rows(stack_client, job["id"])} == {"succeeded", "failed"}

    url = stack_config["DATABASE_URL"]
    other = authorised(stack_client.application.test_client(), create_api_key(url, "mallory"))
    scan_id = by_name["s0.png"]["scan_id"]
    assert other.get(f"/v1/scans/{scan_id}/heatmap").status_code == 404
    assert other.post(f"/v1/scans/{scan_id}/explanation").status_code == 404
    assert explanation_rows(url, job["id"]) == 4
    assert stack_client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert explanation_rows(url, job["id"]) == 0
    assert stack_client.get(f"/v1/scans/{scan_id}/heatmap").status_code == 404


def test_a_scan_explained_on_demand(stack_client):
    job = upload(stack_client, [("one.png", png_bytes(64, seed=3))])
    assert job["explain"] is None
    wait_for_job(stack_client, job["id"])
    (row,) = rows(stack_client, job["id"])
    assert row["explanation"] is None
    assert stack_client.get(f"/v1/scans/{row['scan_id']}/heatmap").status_code == 404
    asked = stack_client.post(f"/v1/scans/{row['scan_id']}/explanation")
    assert asked.status_code == 202 and asked.get_json()["status"] in (
        "queued",
        "running",
        "succeeded",
    )
    assert wait_for_explanation(stack_client, row["scan_id"])["status"] == "succeeded"
    again = stack_client.post(f"/v1/scans/{row['scan_id']}/explanation")
    assert again.status_code == 200 and again.get_json()["status"] == "succeeded"


def test_explain_must_name_a_known_method(client):
    data = {"files": [(io.BytesIO(png_bytes(32)), "a.png")], "explain": "lime"}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert (
        response.status_code == 400
        and "explain must be one of gradcam" in response.get_json()["detail"]
    )


def test_a_heatmap_not_computed_yet_says_where_it_stands(client):
    """No worker: the explanation waits with its scan; cancelling the job cancels both."""
    data = {"files": [(io.BytesIO(png_bytes(32)), "a.png")], "explain": "gradcam"}
    job = client.post("/v1/jobs", data=data, content_type="multipart/form-data").get_json()
    (row,) = rows(client, job["id"])
    assert row["explanation"] == "queued"
    waiting = client.get(f"/v1/scans/{row['scan_id']}/heatmap")
    assert waiting.status_code == 202 and waiting.headers["Retry-After"]
    assert waiting.get_json()["status"] == "queued" and waiting.get_json()["layer"] is None
    for query, problem in (
        ("format=tiff", "format must be png or npy"),
        ("view=xray", "view must be one of overlay, heatmap, slice"),
    ):
        bad = client.get(f"/v1/scans/{row['scan_id']}/heatmap?{query}")
        assert bad.status_code == 400 and problem in bad.get_json()["detail"]
    again = client.post(f"/v1/scans/{row['scan_id']}/explanation")
    assert again.status_code == 202 and again.get_json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    cancelled = client.get(f"/v1/scans/{row['scan_id']}/heatmap")
    assert cancelled.status_code == 409 and "cancelled" in cancelled.get_json()["detail"]
    refused = client.post(f"/v1/scans/{row['scan_id']}/explanation")
    assert refused.status_code == 409 and "no result to explain" in refused.get_json()["detail"]

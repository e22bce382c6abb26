"""Prometheus metrics: the API's ``/metrics`` and a real worker's ``METRICS_PORT``, scraped
before and after a real job through the real stack (Redis, the Celery worker, the database);
who may read ``/metrics``; the sweep's recoveries. The gunicorn (multiprocess) shape is
scraped in tests/test_compose_stack.py.
"""

from __future__ import annotations

import io

import pytest
import requests

from devtools.scrape import parse, value
from tests.conftest import authorised, create_api_key, wait_for_job
from tests.images import corrupt_png, png_bytes

pytestmark = pytest.mark.integration


def names(samples) -> set[str]:
    return {n for n, _, _ in samples}


@pytest.fixture
def metrics_key(stack_config) -> str:
    return create_api_key(stack_config["DATABASE_URL"], owner="prometheus", scopes="metrics")


def scrape_both(stack_client, metrics_key, worker):
    api = stack_client.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
    assert api.status_code == 200, api.get_data(as_text=True)
    answer = requests.get(worker.metrics_url, timeout=10)
    answer.raise_for_status()
    return parse(api.get_data(as_text=True)), parse(answer.text)


def test_a_job_moves_the_counters_of_the_api_and_of_the_worker(stack_client, metrics_key, worker):
    api_before, worker_before = scrape_both(stack_client, metrics_key, worker)
    good, bad = 5, 1
    files = [(io.BytesIO(png_bytes(40, seed=i)), f"s{i}.png") for i in range(good)]
    files.append((io.BytesIO(corrupt_png(40)), "broken.png"))
    response = stack_client.post(
        "/v1/jobs", data={"files": files, "priority": "high"}, content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_json()
    final = wait_for_job(stack_client, response.get_json()["id"])
    assert final["status"] == "partially_succeeded"
    api_after, worker_after = scrape_both(stack_client, metrics_key, worker)

    def moved(before, after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The API: one high-priority job of six scans accepted, its requests timed by route.
    assert moved(api_before, api_after, "covidscan_jobs_submitted_total", priority="high") == 1
    assert (
        moved(api_before, api_after, "covidscan_scans_submitted_total", priority="high")
        == good + bad
    )
    assert (
        moved(
            api_before,
            api_after,
            "covidscan_http_request_duration_seconds_count",
            route="/v1/jobs",
            method="POST",
            status="202",
        )
        == 1
    )
    assert (
        moved(
            api_before,
            api_after,
            "covidscan_http_request_duration_seconds_count",
            route="/v1/jobs/<job_id>",
            method="GET",
            status="200",
        )
        >= 1
    )
    assert not any(
        "/v1/jobs/" in labels.get("route", "") and "<" not in labels["route"]
        for _, labels, _ in api_after
    ), "a route label holds an id"
    # Nothing waits or is leased once the job has ended (from SQL, at scrape time).
    assert value(api_after, "covidscan_scans_waiting") == 0
    assert value(api_after, "covidscan_scans_leased") == 0
    assert {labels["priority"] for n, labels, _ in api_after if n == "covidscan_scans_waiting"} == {
        "high",
        "normal",
        "low",
    }

    # The worker: every scan counted once by status, the job ended once by status.
    model = {"model": "tiny_ct"}
    assert (
        moved(
            worker_before,
            worker_after,
            "covidscan_scans_classified_total",
            status="succeeded",
            **model,
        )
        == good
    )
    assert (
        moved(
            worker_before,
            worker_after,
            "covidscan_scans_classified_total",
            status="failed",
            **model,
        )
        == bad
    )
    assert (
        moved(
            worker_before,
            worker_after,
            "covidscan_jobs_finished_total",
            status="partially_succeeded",
        )
        == 1
    )
    assert (
        moved(worker_before, worker_after, "covidscan_scan_latency_seconds_count", **model)
        == good + bad
    )
    assert moved(worker_before, worker_after, "covidscan_decode_seconds_count") == good + bad
    # Only decoded scans reach the model: the batches held the five good ones.
    assert moved(worker_before, worker_after, "covidscan_batch_size_sum", **model) == good
    batches = moved(worker_before, worker_after, "covidscan_batch_size_count", **model)
    assert 1 <= batches <= good
    assert (
        moved(worker_before, worker_after, "covidscan_inference_seconds_count", **model) == batches
    )
    assert moved(worker_before, worker_after, "covidscan_batch_wait_seconds_count", **model) == good
    fill = moved(worker_before, worker_after, "covidscan_batch_fill_ratio_sum", **model)
    assert fill == pytest.approx(good / 32)  # MAX_BATCH_SIZE's default
    assert moved(worker_before, worker_after, "covidscan_write_seconds_count") >= 1
    # Loaded and built once at start-up; the labels name the model, never a job or scan.
    assert value(worker_after, "covidscan_model_load_seconds_count", **model) >= 1
    assert value(worker_after, "covidscan_engine_build_seconds_count", **model) >= 1
    assert "covidscan_worker_leases_held" in names(worker_after)
    job_id = final["id"]
    assert job_id not in str(api_after) + str(worker_after)


def test_who_may_read_the_api_metrics(app_config, metrics_key_for):
    from api import create_app

    app = create_app(app_config)
    assert app.test_client().get("/metrics").status_code == 401
    reader = authorised(app.test_client(), metrics_key_for(app_config, "submit,read"))
    assert reader.get("/metrics").status_code == 403
    for scopes in ("metrics", "admin"):
        client = authorised(app.test_client(), metrics_key_for(app_config, scopes))
        assert client.get("/metrics").status_code == 200, scopes
    public = create_app({**app_config, "METRICS_ACCESS": "public"}).test_client()
    answer = public.get("/metrics")
    assert answer.status_code == 200 and b"covidscan_scans_waiting" in answer.data


@pytest.fixture
def metrics_key_for():
    return lambda config, scopes: create_api_key(config["DATABASE_URL"], "ops", scopes)


def test_scans_recovered_from_expired_leases_are_counted_by_outcome(app_config):
    from core.metrics import JOBS_FINISHED, SCANS_RECOVERED
    from core.sweep import sweep_once
    from covidscan.settings import load_settings
    from db.blobs import FileBlobStore
    from db.jobs import NewScan, create_job
    from db.scans import claim_next
    from db.session import make_engine, make_session_factory

    settings = load_settings(app_config)
    sessions = make_session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:
        create_job(session, [NewScan(f"{i}.png", f"j/{i}", 1) for i in range(3)], "j" * 32)
    with sessions.begin() as session:  # a worker leases them and dies at once
        assert len(claim_next(session, "dead/1/x", 3, lease_seconds=-1)) == 3
    counters = {
        "requeued": SCANS_RECOVERED.labels("requeued"),
        "failed": SCANS_RECOVERED.labels("failed"),
        "job failed": JOBS_FINISHED.labels("failed"),
    }
    before = {name: counter._value.get() for name, counter in counters.items()}

    def moved():
        return {name: counter._value.get() - before[name] for name, counter in counters.items()}

    def sweep(**changes):
        return sweep_once(
            sessions,
            FileBlobStore(settings.blob_dir),
            lambda tasks: None,
            settings.with_overrides(**changes),
            clean_up=False,
        )

    assert sweep().requeued == 3
    assert moved() == {"requeued": 3, "failed": 0, "job failed": 0}
    with sessions.begin() as session:  # the second worker dies too; no attempt is left
        assert len(claim_next(session, "dead/2/y", 3, lease_seconds=-1)) == 3
    assert sweep(max_attempts=2).failed == 3
    assert moved() == {"requeued": 3, "failed": 3, "job failed": 1}  # the job ended there
    assert sweep(max_attempts=2).failed == 0
    assert moved()["job failed"] == 1


def test_the_queue_is_read_from_sql_at_scrape_time(app, app_config, metrics_key_for):
    client = authorised(app.test_client(), metrics_key_for(app_config, "submit,read,metrics"))
    for priority, count in (("low", 2), ("high", 3)):
        files = [(io.BytesIO(png_bytes(24, seed=i)), f"{i}.png") for i in range(count)]
        assert (
            client.post(
                "/v1/jobs",
                data={"files": files, "priority": priority},
                content_type="multipart/form-data",
            ).status_code
            == 202
        )
    samples = parse(client.get("/metrics").get_data(as_text=True))  # no worker: all wait
    assert value(samples, "covidscan_scans_waiting", priority="high") == 3
    assert value(samples, "covidscan_scans_waiting", priority="low") == 2
    assert value(samples, "covidscan_scans_waiting", priority="normal") == 0
    age = value(samples, "covidscan_oldest_waiting_scan_age_seconds")
    assert 0 <= age < 600  # seconds since the first submission

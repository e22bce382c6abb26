"""Webhooks through the real stack: the API, Redis, a Celery worker of their own (with the
webhook settings) and a receiver on the loopback that verifies every signature."""

import base64
import io
import time
from datetime import datetime

import pytest
from sqlalchemy import create_engine, func, select

from db.models import WebhookDelivery, WebhookEvent
from tests.conftest import (
    WorkerProcess,
    authorised,
    create_api_key,
    fresh_database_url,
    wait_for_job,
    worker_env,
)
from tests.images import png_bytes
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"stack-webhook-secret-32-bytes!!!").decode()
FLAKY = [(500, {}), (500, {}), (500, {}), (200, {})]


@pytest.fixture(scope="module")
def hooks_stack(tmp_path_factory, redis_server, tiny_model_path):
    """Its own database and Redis database, so the session's worker never takes its tasks."""
    base = tmp_path_factory.mktemp("hooks")
    config = {
        "DATABASE_URL": fresh_database_url(base),
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/3",
        "BLOB_DIR": str(base / "blobs"),
        "MODEL_STORE_DIR": str(base / "models"),
        "ENGINE_CACHE_DIR": str(base / "engine-cache"),
        "BATCH_SIZE": "8",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_RETRY_BASE_MS": "1000",
        "SWEEP_INTERVAL": "1",
    }
    process = WorkerProcess(
        worker_env(config, MODEL_PATH=str(tiny_model_path)),
        base / "worker.log",
        name="hooks-worker@%h",
    )
    try:
        process.wait_ready()
        yield config
    finally:
        process.stop()


def submit(client, callback_url, seed):
    data = {
        "files": [(io.BytesIO(png_bytes(32, seed=seed)), "slice.png")],
        "callback_url": callback_url,
    }
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_each_job_gets_one_signed_event_retried_after_500s_with_growing_waits(hooks_stack):
    from api import create_app

    client = authorised(
        create_app(hooks_stack).test_client(), create_api_key(hooks_stack["DATABASE_URL"], "hooks")
    )
    with Receiver({"/flaky": FLAKY, "/gone": [(410, {})]}) as receiver:
        paths = ("/ok", "/ok", "/ok", "/flaky", "/gone")
        submitted = [
            (path, submit(client, receiver.url(path), seed)) for seed, path in enumerate(paths)
        ]
        jobs = dict(submitted)  # the last job of each path
        for _, job_id in submitted:
            assert wait_for_job(client, job_id)["status"] == "succeeded"
        flaky = receiver.wait_for("/flaky", len(FLAKY))
        ok = receiver.wait_for("/ok", 3)
        gone = receiver.wait_for("/gone", 1)
        engine = create_engine(hooks_stack["DATABASE_URL"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every event has reached its final state
            with engine.connect() as conn:
                if not conn.scalar(select(func.count()).where(WebhookEvent.state == "pending")):
                    break
            time.sleep(0.2)
        time.sleep(2.5)  # two more sweeps: nothing is sent again
        assert len(receiver.at("/flaky")) == len(FLAKY) and len(receiver.at("/gone")) == 1
        assert len(receiver.at("/ok")) == 3

    for request in flaky + ok + gone:
        event = request.verify(SECRET)  # standardwebhooks checks the signature and its age
        assert event["type"] == "job.succeeded" and event["data"]["counts"]["succeeded"] == 1
    # one event per job: the three jobs at /ok got one each, each with its own webhook-id
    assert sorted(r.verify(SECRET)["data"]["job_id"] for r in ok) == sorted(
        job_id for path, job_id in submitted if path == "/ok"
    )
    assert len({r.headers["webhook-id"] for r in ok}) == 3
    assert {r.headers["webhook-id"] for r in flaky} == {flaky[0].headers["webhook-id"]}
    waits = [later.at - earlier.at for earlier, later in zip(flaky, flaky[1:])]
    print("seconds between attempts after 500s:", [round(w, 2) for w in waits])
    assert min(waits) >= 0.7  # never sooner than scheduled

    attempts = client.get(f"/v1/jobs/{jobs['/flaky']}/deliveries").get_json()["events"][0]
    assert attempts["state"] == "delivered"
    assert [(a["status_code"], a["outcome"]) for a in attempts["attempts"]] == [
        (500, "retry")
    ] * 3 + [(200, "delivered")]
    # The waits each retry was given: base 1 s × 2^(n−1), jittered ×0.75–1, so growing. (The
    # arrivals above also carry the sweep's interval, which can make them overlap.)
    scheduled = [
        (
            datetime.fromisoformat(a["next_attempt_at"]) - datetime.fromisoformat(a["at"])
        ).total_seconds()
        for a in attempts["attempts"][:3]
    ]
    print("seconds scheduled after each 500:", [round(w, 2) for w in scheduled])
    assert 0.7 <= scheduled[0] < scheduled[1] < scheduled[2] <= 4.5, scheduled
    gone_events = client.get(f"/v1/jobs/{jobs['/gone']}/deliveries").get_json()["events"]
    assert [(e["state"], len(e["attempts"])) for e in gone_events] == [("gone", 1)]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(WebhookEvent)) == 5
        assert conn.scalar(select(func.count()).select_from(WebhookDelivery)) == 3 + 4 + 1
    engine.dispose()

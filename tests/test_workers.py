"""Workers say when they are ready and what serves each model; /readyz counts them."""

import time
from datetime import timedelta

import pytest

from db.models import utcnow
from db.session import make_engine, make_session_factory
from db.workers import STALE_AFTER, announce, beat, live_workers, withdraw


@pytest.mark.database
def test_a_worker_is_live_while_it_beats_and_gone_once_withdrawn_or_stale(database_url):
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        announce(session, "w1@host", 123, [{"model": {"name": "m"}}])
        announce(session, "w2@host", 456, [])
    with sessions() as session:
        assert [(w.name, w.ready, w.pid) for w in live_workers(session)] == [
            ("w1@host", True, 123),
            ("w2@host", True, 456),
        ]
        later = utcnow() + STALE_AFTER + timedelta(seconds=1)
        assert live_workers(session, now=later) == []  # no beat for too long: dead
    with sessions.begin() as session:
        assert beat(session, "w1@host", [{"model": {"name": "n"}}])
        withdraw(session, "w2@host")
        assert not beat(session, "w2@host")
    with sessions() as session:
        (only,) = live_workers(session)
        assert only.name == "w1@host" and only.engines == [{"model": {"name": "n"}}]
    engine.dispose()


@pytest.mark.integration
def test_readyz_counts_ready_workers_and_workers_shows_what_serves(stack_client):
    ready = stack_client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["workers"]["ready"] >= 1
    workers = stack_client.get("/v1/workers").get_json()["workers"]
    (tested,) = [w for w in workers if w["name"].startswith("test-worker@")]
    assert tested["ready"] is True and tested["heartbeat_at"]
    (model,) = [m for m in tested["models"] if m["model"]["name"] == "tiny_ct"]
    fp32 = model["engines"]["fp32"]  # INFERENCE_PRECISION's default, warmed before ready
    assert (fp32["engine"], fp32["precision"], fp32["gate"]["passed"]) == ("openvino", "fp32", True)
    assert model["calibration"]["generated"] is True


def test_readyz_does_not_fail_without_workers(client):
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready" and body["workers"] == {"ready": 0}


@pytest.mark.integration
def test_a_job_asking_for_auto_runs_on_the_engine_the_worker_measured_fastest(stack_client):
    from tests.conftest import wait_for_job
    from tests.images import png_bytes
    from tests.test_end_to_end import results, upload

    job = upload(
        stack_client, [(f"a{i}.png", png_bytes(40, seed=i)) for i in range(3)], precision="auto"
    )
    assert wait_for_job(stack_client, job["id"])["status"] == "succeeded"
    rows = results(stack_client, job["id"])
    workers = stack_client.get("/v1/workers").get_json()["workers"]
    (tested,) = [w for w in workers if w["name"].startswith("test-worker@")]
    (model,) = [m for m in tested["models"] if m["model"]["name"] == "tiny_ct"]
    engines = model["engines"]
    assert set(engines) >= {"fp32", "bf16", "fp16", "int8", "auto"}
    auto = engines["auto"]
    assert {(r["engine"], r["precision"]) for r in rows} == {(auto["engine"], auto["precision"])}
    measured = {
        name: engines[name]["images_per_second"] for name in ("fp32", "bf16", "fp16", "int8")
    }
    assert all(speed > 0 for speed in measured.values()), measured
    assert auto["images_per_second"] == max(measured.values())
    for name in (
        "bf16",
        "fp16",
        "int8",
    ):  # each either passed its gate or says why it does not serve
        choice = engines[name]
        assert (
            choice["note"] == "passed its accuracy gate"
            or "serving TensorFlow fp32" in choice["note"]
        ), choice


@pytest.mark.database
def test_an_announcement_the_database_refused_is_written_on_the_next_try(database_url):
    from sqlalchemy.exc import OperationalError

    from worker.presence import Presence

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    refusals = [OperationalError("INSERT", {}, Exception("database is locked"))]

    class RefusesOnce:
        def begin(self):
            if refusals:
                raise refusals.pop()
            return sessions.begin()

    presence = Presence(RefusesOnce(), "w3@host", lambda: [], interval=30).start()
    try:
        deadline = utcnow() + timedelta(seconds=10)
        found = []
        while not found and utcnow() < deadline:
            with sessions() as session:
                found = [w.name for w in live_workers(session)]
            time.sleep(0.05)
        assert found == ["w3@host"]  # within about a second, not at the next 30 s beat
    finally:
        presence.stop()
    with sessions() as session:
        assert live_workers(session) == []
    engine.dispose()

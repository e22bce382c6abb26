"""Webhooks through the API and SQL, without a worker: callback URLs, endpoints, exactly one
event per job, delivery attempts against a receiver on the loopback, deletion."""

import base64
import io
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from api import create_app
from core.sweep import sweep_once
from core.webhooks import deliver_event, relay_events
from covidscan.settings import load_settings
from db.blobs import FileBlobStore
from db.identity import ModelIdentity
from db.models import Job, Scan, ScanStatus, WebhookDelivery, WebhookEvent, utcnow
from db.scans import ScanOutcome, claim_next, record_outcomes
from db.session import make_engine, make_session_factory
from db.webhooks import record_finished_jobs
from tests.conftest import POSTGRES_URL, authorised, create_api_key
from tests.images import png_bytes
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OWN_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
IDENTITY = ModelIdentity("m", "1", "b" * 64, True, "tensorflow", "fp32", "seed-v1")


@pytest.fixture
def config(app_config):
    return {
        **app_config,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_RETRY_BASE_MS": "1000",
    }


@pytest.fixture
def hooks_app(config):
    return create_app(config)


@pytest.fixture
def sessions(config):
    factory = make_session_factory(make_engine(config["DATABASE_URL"]))
    yield factory
    factory.kw["bind"].dispose()


def client_of(app, config, owner):
    return authorised(app.test_client(), create_api_key(config["DATABASE_URL"], owner))


def submit(client, callback_url=None, count=2, **fields):
    data = {
        "files": [(io.BytesIO(png_bytes(24, seed=i)), f"doe_john_{i}.png") for i in range(count)],
        **fields,
    }
    if callback_url:
        data["callback_url"] = callback_url
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def finish_all(sessions):
    """What a worker does: lease every waiting scan, write results, make the events."""
    with sessions.begin() as session:
        leases = claim_next(session, "w1", 100, 60)
    with sessions.begin() as session:
        record_outcomes(
            session,
            [ScanOutcome(lease.scan_id, 0.9, "COVID") for lease in leases],
            leases,
            IDENTITY,
            "w@host",
            "w1",
        )
        return record_finished_jobs(session, {lease.job_id for lease in leases}).event_ids


def events(sessions, job_id=None):
    with sessions() as session:
        query = select(WebhookEvent).order_by(WebhookEvent.url)
        return list(
            session.scalars(query if job_id is None else query.where(WebhookEvent.job_id == job_id))
        )


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("http://169.254.169.254/latest/", "metadata"),
        ("http://[::1]:9/hook", "loopback"),
    ],
)
def test_a_callback_to_an_internal_address_is_refused_at_submission(app, client, url, reason):
    response = submit(client, url)
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    detail = response.get_json()["detail"]
    assert detail.startswith("callback_url:") and reason in detail
    assert "WEBHOOK_ALLOWED_HOSTS" in detail
    assert client.get("/v1/jobs").get_json()["jobs"] == []  # nothing was stored


def test_a_callback_needs_a_secret_to_sign_with(app_config):
    app = create_app({**app_config, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"})
    alice = client_of(app, app_config, "alice")
    refused = submit(alice, "http://127.0.0.1:9/hook")
    assert refused.status_code == 400 and "WEBHOOK_SECRET" in refused.get_json()["detail"]
    assert alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}).status_code == 400
    made = alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": OWN_SECRET})
    assert made.status_code == 201
    assert submit(alice, "http://127.0.0.1:9/hook").status_code == 202


def test_endpoints_are_per_owner_and_never_show_their_secret(hooks_app, config):
    alice, bob = client_of(hooks_app, config, "alice"), client_of(hooks_app, config, "bob")
    made = alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/a", "secret": OWN_SECRET})
    assert made.status_code == 201 and made.get_json()["own_secret"] is True
    assert OWN_SECRET not in made.get_data(as_text=True)
    assert alice.post("/v1/webhooks", data={"url": "http://127.0.0.1:9/b"}).status_code == 201
    assert alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/a"}).status_code == 409
    bad = alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/c", "secret": "s3cret"})
    assert bad.status_code == 400 and "whsec_" in bad.get_json()["detail"]
    refused = bob.post("/v1/webhooks", json={"url": "http://192.168.1.1/x"})
    assert refused.status_code == 400 and "private" in refused.get_json()["detail"]
    listed = alice.get("/v1/webhooks").get_json()["webhooks"]
    assert [w["url"] for w in listed] == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    assert OWN_SECRET not in alice.get("/v1/webhooks").get_data(as_text=True)
    assert bob.get("/v1/webhooks").get_json()["webhooks"] == []
    endpoint_id = made.get_json()["id"]
    assert bob.delete(f"/v1/webhooks/{endpoint_id}").status_code == 404
    assert alice.delete(f"/v1/webhooks/{endpoint_id}").status_code == 204
    assert len(alice.get("/v1/webhooks").get_json()["webhooks"]) == 1


def test_a_job_ending_makes_one_event_per_destination_once(hooks_app, config, sessions):
    alice = client_of(hooks_app, config, "alice")
    alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/all"})
    alice.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/job"})  # also the callback
    job = submit(alice, "http://127.0.0.1:9/job", name="Doe, John").get_json()
    assert job["callback_url"] == "http://127.0.0.1:9/job"
    made = finish_all(sessions)
    assert len(made) == 2
    assert [e.url for e in events(sessions)] == ["http://127.0.0.1:9/all", "http://127.0.0.1:9/job"]
    with sessions.begin() as session:  # a redelivered write, or a sweep: nothing more
        assert record_finished_jobs(session, [job["id"]]).statuses == {}
        assert record_finished_jobs(session).event_ids == []
    event = events(sessions)[0]
    assert event.type == "job.succeeded" and event.payload["data"]["counts"]["succeeded"] == 2
    text = repr(event.payload)
    assert "doe" not in text.lower() and "png" not in text  # ids and counts only


def test_a_job_no_writer_noticed_ending_gets_its_event_from_the_sweep(
    hooks_app, config, sessions, tmp_path
):
    alice = client_of(hooks_app, config, "alice")
    job_id = submit(alice, "http://127.0.0.1:9/job").get_json()["id"]
    with sessions.begin() as session:  # as if two writers finished it at once, unaware
        session.execute(
            update(Scan)
            .where(Scan.job_id == job_id)
            .values(status=ScanStatus.FAILED, error="x", finished_at=utcnow())
        )
    assert events(sessions) == []
    settings = load_settings(config)
    report = sweep_once(
        sessions,
        FileBlobStore(tmp_path / "blobs"),
        lambda n: None,
        settings,
        send_deliveries=lambda ids, countdown: None,
    )
    assert report.events_made == 1 and report.events_queued == 1
    assert [e.type for e in events(sessions)] == ["job.failed"]
    again = sweep_once(
        sessions,
        FileBlobStore(tmp_path / "blobs"),
        lambda n: None,
        settings,
        send_deliveries=lambda ids, countdown: None,
    )
    assert again.events_made == 0 and again.events_queued == 0  # queued already
    assert len(events(sessions)) == 1


def test_cancelling_a_waiting_job_makes_its_event_in_the_same_commit(hooks_app, config, sessions):
    alice = client_of(hooks_app, config, "alice")
    job_id = submit(alice, "http://127.0.0.1:9/job").get_json()["id"]
    assert alice.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "cancelled"
    assert [(e.type, e.payload["data"]["counts"]["cancelled"]) for e in events(sessions)] == [
        ("job.cancelled", 2)
    ]


def test_jobs_from_before_webhooks_get_no_event(hooks_app, config, sessions):
    alice = client_of(hooks_app, config, "alice")
    job_id = submit(alice, "http://127.0.0.1:9/job").get_json()["id"]
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(finish_event=None))
    assert finish_all(sessions) == [] and events(sessions) == []


def deliver(sessions, config, event_id):
    return deliver_event(sessions, load_settings(config), event_id)


def test_attempts_are_signed_recorded_and_410_stops_them(hooks_app, config, sessions):
    with Receiver({"/flaky": [(500, {}), (200, {})], "/gone": [(410, {})]}) as receiver:
        alice = client_of(hooks_app, config, "alice")
        flaky = submit(alice, receiver.url("/flaky")).get_json()["id"]
        gone = submit(alice, receiver.url("/gone")).get_json()["id"]
        finish_all(sessions)
        (flaky_event,) = events(sessions, flaky)
        (gone_event,) = events(sessions, gone)
        assert deliver(sessions, config, gone_event.id) == "gone"
        assert deliver(sessions, config, gone_event.id) is None  # stopped for good
        assert deliver(sessions, config, flaky_event.id) == "retry"
        assert deliver(sessions, config, flaky_event.id) is None  # not due yet
        with sessions.begin() as session:
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == flaky_event.id)
                .values(next_attempt_at=utcnow())
            )
        assert deliver(sessions, config, flaky_event.id) == "delivered"
        sent = receiver.at("/flaky")
    assert len(sent) == 2 and len(receiver.at("/gone")) == 1
    assert {r.headers["webhook-id"] for r in sent} == {flaky_event.id}
    assert sent[0].verify(SECRET)["data"]["job_id"] == flaky
    body = alice.get(f"/v1/jobs/{flaky}/deliveries").get_json()
    attempts = body["events"][0]["attempts"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retry"),
        (2, 200, "delivered"),
    ]
    assert attempts[0]["next_attempt_at"] is not None and body["events"][0]["state"] == "delivered"
    gone_body = alice.get(f"/v1/jobs/{gone}/deliveries").get_json()["events"][0]
    assert gone_body["state"] == "gone" and len(gone_body["attempts"]) == 1
    other = client_of(hooks_app, config, "bob")
    assert other.get(f"/v1/jobs/{flaky}/deliveries").status_code == 404


def test_retry_after_sets_the_next_attempt_and_redirects_are_not_followed(
    hooks_app, config, sessions
):
    answers = {
        "/busy": [(503, {"Retry-After": "120"})],
        "/moved": [(302, {"Location": "/elsewhere"})],
    }
    with Receiver(answers) as receiver:
        alice = client_of(hooks_app, config, "alice")
        busy = submit(alice, receiver.url("/busy")).get_json()["id"]
        moved = submit(alice, receiver.url("/moved")).get_json()["id"]
        finish_all(sessions)
        before = utcnow()
        assert deliver(sessions, config, events(sessions, busy)[0].id) == "retry"
        assert deliver(sessions, config, events(sessions, moved)[0].id) == "retry"
        assert receiver.at("/elsewhere") == [] and len(receiver.at("/moved")) == 1
    busy_event = events(sessions, busy)[0]
    wait = (busy_event.next_attempt_at.replace(tzinfo=before.tzinfo) - before).total_seconds()
    assert 119 <= wait <= 125


def test_an_internal_destination_is_refused_again_at_delivery(app_config, config, sessions):
    with Receiver() as receiver:
        hooks_app = create_app(config)
        alice = client_of(hooks_app, config, "alice")
        job_id = submit(alice, receiver.url("/hook")).get_json()["id"]
        finish_all(sessions)
        strict = {**config, "WEBHOOK_ALLOWED_HOSTS": ""}  # the host is no longer allowed
        assert deliver(sessions, strict, events(sessions, job_id)[0].id) == "retry"
        assert receiver.received == []
    attempt = alice.get(f"/v1/jobs/{job_id}/deliveries").get_json()["events"][0]["attempts"][0]
    assert attempt["status_code"] is None and "loopback" in attempt["error"]


def test_deleting_a_job_deletes_its_events_and_attempts(hooks_app, config, sessions):
    with Receiver({"/x": [(500, {})]}) as receiver:
        alice = client_of(hooks_app, config, "alice")
        job_id = submit(alice, receiver.url("/x")).get_json()["id"]
        finish_all(sessions)
        deliver(sessions, config, events(sessions, job_id)[0].id)
    assert alice.delete(f"/v1/jobs/{job_id}").status_code == 204
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 0
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0


def test_retries_stop_when_the_window_has_passed(hooks_app, config, sessions):
    with Receiver({"/down": [(500, {})]}) as receiver:
        alice = client_of(hooks_app, config, "alice")
        job_id = submit(alice, receiver.url("/down")).get_json()["id"]
        finish_all(sessions)
        event = events(sessions, job_id)[0]
        with sessions.begin() as session:
            session.execute(
                update(WebhookEvent)
                .where(WebhookEvent.id == event.id)
                .values(created_at=utcnow() - timedelta(hours=25))
            )
        assert deliver(sessions, config, event.id) == "failed"
    assert events(sessions, job_id)[0].state == "failed"


def test_deleting_an_endpoint_stops_its_pending_events_but_not_a_jobs_own(
    hooks_app, config, sessions
):
    alice = client_of(hooks_app, config, "alice")
    endpoint = alice.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/all", "secret": OWN_SECRET}
    ).get_json()
    plain = submit(alice).get_json()["id"]
    named = submit(alice, "http://127.0.0.1:9/all").get_json()["id"]
    finish_all(sessions)
    assert alice.delete(f"/v1/webhooks/{endpoint['id']}").status_code == 204
    assert [e.state for e in events(sessions, plain)] == ["failed"]
    assert [e.state for e in events(sessions, named)] == ["pending"]


def test_two_writers_finishing_one_job_at_once_make_exactly_one_event(hooks_app, config, sessions):
    """Each writes one of the job's two last scans; neither commit may miss the other's."""
    alice = client_of(hooks_app, config, "alice")
    job_id = submit(alice, "http://127.0.0.1:9/job").get_json()["id"]
    with sessions.begin() as session:
        first = claim_next(session, "w1", 1, 60)
    with sessions.begin() as session:
        second = claim_next(session, "w2", 1, 60)
    made = {}

    def write(name, leases, owner):
        with sessions.begin() as session:
            record_outcomes(
                session,
                [ScanOutcome(lease.scan_id, 0.5, "COVID") for lease in leases],
                leases,
                IDENTITY,
                owner,
                owner,
            )
            made[name] = record_finished_jobs(session, [job_id])
            if name == "first":
                started.set()
                time.sleep(0.5)  # the other writer runs meanwhile, and must wait for this one

    started = threading.Event()
    writer = threading.Thread(target=write, args=("first", first, "w1"))
    writer.start()
    started.wait(10)
    write("second", second, "w2")
    writer.join()
    # One of the two writers recorded the job's end (and its one event); the other nothing.
    assert sorted([made["first"].statuses, made["second"].statuses], key=len) == [
        {},
        {job_id: "succeeded"},
    ]
    assert len(made["first"].event_ids) + len(made["second"].event_ids) == 1
    with sessions.begin() as session:
        assert record_finished_jobs(session).event_ids == []
    assert len(events(sessions, job_id)) == 1


@pytest.mark.skipif(
    not POSTGRES_URL.startswith("postgres"),
    reason="SQLite serialises writers: relays there cannot overlap on rows",
)
def test_relays_running_at_once_send_each_due_event_once(hooks_app, config, sessions):
    """The API, every worker and the sweep relay due events; one that finds the rows
    another is sending skips them instead of sending them again or waiting on them."""
    alice = client_of(hooks_app, config, "alice")
    for _ in range(4):
        assert submit(alice, "http://127.0.0.1:9/job", count=1).status_code == 202
    assert len(finish_all(sessions)) == 4
    sent, sending = [], threading.Event()

    def slow_send(ids, countdown):
        sent.append(list(ids))
        sending.set()
        time.sleep(0.5)  # the second relay runs while the first holds its events

    first = threading.Thread(target=relay_events, args=(sessions, slow_send))
    first.start()
    assert sending.wait(10)
    assert relay_events(sessions, slow_send) == 0
    first.join()
    assert sorted(sent[0]) == sorted(event.id for event in events(sessions)) and len(sent) == 1
    assert relay_events(sessions, slow_send) == 0  # marked queued: not sent again so soon

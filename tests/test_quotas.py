"""Per-owner rate limits and quotas, counted in the real (embedded) Redis that every API
process shares, and the database (no worker: jobs stay queued)."""

import io
import os
import uuid

import pytest

from api import create_app
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.integration


def new_owner() -> str:
    """Counters live in the session's Redis: each test counts for owners of its own."""
    return f"owner-{uuid.uuid4().hex[:8]}"


def upload(client, scans: int):
    files = [(io.BytesIO(png_bytes(16, seed=i)), f"s{i}.png") for i in range(scans)]
    return client.post("/v1/jobs", data={"files": files}, content_type="multipart/form-data")


def assert_429(response):
    assert response.status_code == 429 and response.mimetype == "application/problem+json"
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1 and response.get_json()["retry_after"] == retry_after
    return response.get_json()["detail"]


def blob_files(root):
    return [f for _, _, names in os.walk(root) for f in names] if os.path.isdir(root) else []


def test_the_request_rate_is_limited_per_owner_across_api_processes(app_config):
    config = {**app_config, "RATE_LIMIT": "3/minute"}
    first, second = create_app(config), create_app(config)  # two processes sharing Redis
    key = create_api_key(app_config["DATABASE_URL"], new_owner())
    other = authorised(first.test_client(), create_api_key(app_config["DATABASE_URL"], new_owner()))
    statuses = [
        authorised(app.test_client(), key).get("/v1/jobs").status_code
        for app in (first, second, first)
    ]
    assert statuses == [200, 200, 200]
    detail = assert_429(authorised(second.test_client(), key).get("/v1/jobs"))
    assert "RATE_LIMIT" in detail
    assert other.get("/v1/jobs").status_code == 200  # another owner is not slowed
    assert authorised(first.test_client(), key).get("/healthz").status_code == 200


def test_scans_per_hour_refuse_a_job_that_does_not_fit_and_keep_nothing(app_config):
    app = create_app({**app_config, "SCANS_PER_HOUR": "5"})
    client = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], new_owner()))
    assert upload(client, 3).status_code == 202
    stored = blob_files(app_config["BLOB_DIR"])
    detail = assert_429(upload(client, 3))
    assert "SCANS_PER_HOUR" in detail and "2 are left" in detail
    assert blob_files(app_config["BLOB_DIR"]) == stored
    assert len(client.get("/v1/jobs").get_json()["jobs"]) == 1
    assert upload(client, 2).status_code == 202
    assert "used up" in assert_429(upload(client, 1))


def test_unfinished_jobs_per_owner_are_capped(app_config):
    app = create_app({**app_config, "MAX_ACTIVE_JOBS": "2"})
    client = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], new_owner()))
    other = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], new_owner()))
    assert [upload(client, 1).status_code for _ in range(2)] == [202, 202]
    assert "MAX_ACTIVE_JOBS" in assert_429(upload(client, 1))
    assert upload(other, 1).status_code == 202


def test_the_defaults_leave_normal_use_alone():
    from covidscan.settings import load_settings

    settings = load_settings({})
    assert settings.rate_limit == "3000/minute"
    assert settings.scans_per_hour >= 100_000 and settings.max_active_jobs >= 500


@pytest.mark.parametrize(
    "name, value",
    [
        ("RATE_LIMIT", "fast"),
        ("RATE_LIMIT", "0/minute"),
        ("SCANS_PER_HOUR", "0"),
        ("MAX_ACTIVE_JOBS", "many"),
        ("AUTH", "maybe"),
        ("SESSION_COOKIE_SECURE", "yes"),
    ],
)
def test_a_wrong_limit_names_its_variable(name, value):
    from covidscan.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_racing_submissions_cannot_pass_the_unfinished_jobs_cap_together(app_config):
    import threading

    config = {**app_config, "MAX_ACTIVE_JOBS": "1"}
    apps = [create_app(config), create_app(config)]  # two API processes on one database
    key = create_api_key(app_config["DATABASE_URL"], new_owner())
    clients = [authorised(apps[i % 2].test_client(), key) for i in range(6)]
    start = threading.Barrier(len(clients))
    statuses: list[int] = []

    def submit(client):
        start.wait()
        statuses.append(upload(client, 4).status_code)

    threads = [threading.Thread(target=submit, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [202] + [429] * 5
    assert len(clients[0].get("/v1/jobs").get_json()["jobs"]) == 1


def test_wrong_keys_are_refused_per_address_before_they_are_looked_up(app_config):
    config = {**app_config, "FAILED_AUTH_LIMIT": "3/minute"}
    first, second = create_app(config), create_app(config)  # two API processes
    address = f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    here = {"REMOTE_ADDR": address}
    wrong = {"Authorization": "Bearer csk_not-a-key"}
    statuses = [
        app.test_client().get("/v1/jobs", headers=wrong, environ_base=here).status_code
        for app in (first, second, first)
    ]
    assert statuses == [401, 401, 401]
    detail = assert_429(second.test_client().get("/v1/jobs", headers=wrong, environ_base=here))
    assert "FAILED_AUTH_LIMIT" in detail
    # The address is refused even with a good key until the window passes; others are not.
    good = {"Authorization": f"Bearer {create_api_key(app_config['DATABASE_URL'], new_owner())}"}
    assert first.test_client().get("/v1/jobs", headers=good, environ_base=here).status_code == 429
    assert (
        first.test_client()
        .get("/v1/jobs", headers=good, environ_base={"REMOTE_ADDR": "10.8.0.1"})
        .status_code
        == 200
    )
    # Requests without any key are not counted: a page left open cannot lock anyone out.
    for _ in range(5):
        assert (
            first.test_client()
            .get("/v1/jobs", environ_base={"REMOTE_ADDR": "10.8.0.2"})
            .status_code
            == 401
        )
    assert (
        first.test_client()
        .get("/v1/jobs", headers=good, environ_base={"REMOTE_ADDR": "10.8.0.2"})
        .status_code
        == 200
    )


def test_behind_a_trusted_proxy_failed_sign_ins_count_per_forwarded_client(app_config):
    app = create_app({**app_config, "FAILED_AUTH_LIMIT": "2/minute", "PROXY_HOPS": "1"})
    proxy = {"REMOTE_ADDR": "10.7.0.1"}  # every request arrives from the proxy
    wrong = {"Authorization": "Bearer csk_not-a-key"}
    attacker = {**wrong, "X-Forwarded-For": f"203.0.113.{uuid.uuid4().int % 250}"}
    for _ in range(2):
        assert (
            app.test_client().get("/v1/jobs", headers=attacker, environ_base=proxy).status_code
            == 401
        )
    assert (
        app.test_client().get("/v1/jobs", headers=attacker, environ_base=proxy).status_code == 429
    )
    good = {
        "Authorization": f"Bearer {create_api_key(app_config['DATABASE_URL'], new_owner())}",
        "X-Forwarded-For": "198.51.100.7",
    }
    assert app.test_client().get("/v1/jobs", headers=good, environ_base=proxy).status_code == 200


def test_explanations_count_against_scans_per_hour(app_config):
    app = create_app({**app_config, "SCANS_PER_HOUR": "5"})
    client = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], new_owner()))

    def submit(scans, **form):
        files = [(io.BytesIO(png_bytes(16, seed=i)), f"s{i}.png") for i in range(scans)]
        return client.post(
            "/v1/jobs", data={"files": files, **form}, content_type="multipart/form-data"
        )

    explained = submit(2, explain="gradcam")  # two scans and their two Grad-CAMs: 4 of 5
    assert explained.status_code == 202
    stored = blob_files(app_config["BLOB_DIR"])
    detail = assert_429(submit(1, explain="gradcam"))
    assert "1 scans and their 1 explanations" in detail and "1 are left" in detail
    assert blob_files(app_config["BLOB_DIR"]) == stored
    plain = submit(1)  # the last one
    assert plain.status_code == 202

    [row] = client.get(f"/v1/jobs/{plain.get_json()['id']}/results").get_json()["results"]
    detail = assert_429(client.post(f"/v1/scans/{row['scan_id']}/explanation"))
    assert "this explanation exceeds" in detail and "SCANS_PER_HOUR" in detail
    assert client.get(f"/v1/scans/{row['scan_id']}/explanation").status_code == 404
    # Asking again for one already queued queues nothing, so costs nothing.
    first = client.get(f"/v1/jobs/{explained.get_json()['id']}/results").get_json()["results"][0]
    assert client.post(f"/v1/scans/{first['scan_id']}/explanation").status_code == 202

"""The audit log: what the API and the CLI record, and ``GET /v1/audit`` for administrators,
against a real database and Redis."""

import io
import json

import pytest
from click.testing import CliRunner

from cli.main import main
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.integration

SECRET_NAME = "patient-4711-doe.png"


@pytest.fixture
def admin(app, app_config):
    return authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], "root", "admin")
    )


def events(admin, **query):
    response = admin.get("/v1/audit", query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_reads_and_writes_of_a_job_are_recorded_without_file_names(client, admin, api_key):
    job = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(16)), SECRET_NAME)]},
        content_type="multipart/form-data",
    ).get_json()
    scan_id = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"][0]["scan_id"]
    client.get(f"/v1/jobs/{job['id']}/results?format=csv").get_data()
    client.get(f"/v1/scans/{scan_id}/thumbnail")
    body = events(admin, job_id=job["id"])
    key_id = api_key.split("_")[1]
    assert [(e["action"], e["key_id"], e["job_id"]) for e in body["events"]] == [
        ("thumbnail.view", key_id, job["id"]),
        ("results.csv", key_id, job["id"]),
        ("results.read", key_id, job["id"]),
        ("job.submit", key_id, job["id"]),
    ]
    assert body["events"][-1]["detail"]["scans"] == 1
    assert body["events"][0]["detail"] == {"scan_id": scan_id}
    assert {e["owner"][:6] for e in body["events"]} == {"alice-"}
    assert SECRET_NAME not in json.dumps(body) and "patient" not in json.dumps(body)


def test_the_log_filters_by_owner_and_pages_back(app, app_config, admin):
    for owner in ("gina", "hal", "gina"):
        c = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], owner))
        c.post(
            "/v1/jobs",
            data={"files": [(io.BytesIO(png_bytes(16)), "a.png")]},
            content_type="multipart/form-data",
        )
    assert [e["owner"] for e in events(admin, owner="gina")["events"]] == ["gina", "gina"]
    first = events(admin, limit=2)
    second = events(admin, limit=2, cursor=first["next_cursor"])
    assert len(first["events"]) == 2 and first["next_cursor"] is not None
    assert first["events"][-1]["id"] > second["events"][0]["id"]
    assert events(admin, action="job.submit")["events"][0]["action"] == "job.submit"
    assert admin.get("/v1/audit?limit=0").status_code == 400
    assert admin.get("/v1/audit?action=nope").status_code == 400


def test_only_administrators_read_the_log(client):
    response = client.get("/v1/audit")
    assert response.status_code == 403 and "admin" in response.get_json()["detail"]


def test_keys_cli_creates_lists_revokes_and_records_it(app, app_config, admin):
    env = {"DATABASE_URL": app_config["DATABASE_URL"], "MODEL_PATH": ""}
    runner = CliRunner()
    created = runner.invoke(
        main,
        ["keys", "create", "--owner", "ivy", "--scopes", "read", "--expires", "30d"],
        env=env,
        catch_exceptions=False,
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("csk_")
    reader = authorised(app.test_client(), key)
    assert reader.get("/v1/jobs").status_code == 200
    listed = [
        json.loads(line)
        for line in runner.invoke(main, ["keys", "list", "--json"], env=env).stdout.splitlines()
    ]
    (ivy,) = [row for row in listed if row["owner"] == "ivy"]
    assert ivy["scopes"] == "read" and ivy["usable"] and ivy["expires_at"] is not None
    assert all(key.split("_", 2)[2] not in json.dumps(row) for row in listed)
    revoked = runner.invoke(main, ["keys", "revoke", key], env=env)  # the whole key works too
    assert revoked.exit_code == 0 and ivy["id"] in revoked.output
    assert reader.get("/v1/jobs").status_code == 401
    actions = [
        (e["action"], e["detail"]["key_owner"])
        for e in events(admin)["events"]
        if e["action"].startswith("key.")
    ]
    assert actions == [("key.revoke", "ivy"), ("key.create", "ivy")]
    assert all(
        e["owner"].startswith("cli:")
        for e in events(admin)["events"]
        if e["action"].startswith("key.")
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "create", "--owner", "x", "--scopes", "root"], "scopes must be some of"),
        (["keys", "create", "--owner", "x", "--expires", "soon"], "30d"),
        (["keys", "create", "--owner", "x", "--expires", "2001-01-01"], "in the past"),
        (["keys", "revoke", "csk_0123456789abcdef"], "no key with id"),
        (["keys", "revoke", "hello world"], "a key id looks like"),
    ],
)
def test_keys_cli_names_the_problem(app_config, args, message):
    result = CliRunner().invoke(
        main, args, env={"DATABASE_URL": app_config["DATABASE_URL"], "MODEL_PATH": ""}
    )
    assert result.exit_code != 0 and message in result.output

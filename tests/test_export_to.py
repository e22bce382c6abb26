"""A job names the destinations its series' results go to (``export_to``): checked against
the registered ones when it is submitted, kept with the job, shown in its answer."""

from __future__ import annotations

import io

import pytest

from core.destinations import DestinationError, export_names
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes


def test_export_names_are_split_checked_and_kept_once():
    assert export_names(" pacs, archive ,pacs,") == ["pacs", "archive"]
    assert export_names(None) == [] and export_names("") == [] and export_names(" None ") == []
    with pytest.raises(DestinationError, match="name must be"):
        export_names("pacs,-bad")
    with pytest.raises(DestinationError, match="reserved"):
        export_names("pacs,none")


@pytest.fixture
def admin(app, app_config):
    return authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], "root", "admin")
    )


def submit(client, **fields):
    return client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(64)), "a.png")], **fields},
        content_type="multipart/form-data",
    )


@pytest.mark.integration
def test_a_job_keeps_the_registered_destinations_it_names(admin, client):
    added = admin.post(
        "/v1/destinations",
        json={
            "name": "pacs",
            "kind": "dicom",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": 104,
        },
    )
    assert added.status_code == 201, added.get_json()
    accepted = submit(client, export_to="pacs")
    assert accepted.status_code == 202, accepted.get_json()
    job_id = accepted.get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").get_json()["export_to"] == ["pacs"]
    plain = submit(client)
    assert client.get(f"/v1/jobs/{plain.get_json()['id']}").get_json()["export_to"] == []


@pytest.mark.integration
@pytest.mark.parametrize(
    ("export_to", "named"),
    [("nowhere", "'nowhere'"), ("pacs,nowhere", "'nowhere'"), ("-x", "name must be")],
)
def test_an_unknown_or_malformed_destination_is_refused_naming_it(client, export_to, named):
    refused = submit(client, export_to=export_to)
    assert refused.status_code == 400, refused.get_json()
    assert "export_to" in refused.get_json()["detail"] and named in refused.get_json()["detail"]


@pytest.mark.integration
def test_an_owners_default_destinations_apply_when_a_job_names_none(admin, client, app, app_config):
    for name in ("pacs", "archive"):
        added = admin.post(
            "/v1/destinations",
            json={
                "name": name,
                "kind": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": 9,
            },
        )
        assert added.status_code == 201, added.get_json()
    assert client.get("/v1/export-defaults").get_json() == {"export_to": []}
    refused = client.put("/v1/export-defaults", json={"export_to": "pacs,nowhere"})
    assert refused.status_code == 400 and "'nowhere'" in refused.get_json()["detail"]
    assert client.get("/v1/export-defaults").get_json() == {"export_to": []}  # nothing kept
    chosen = client.put("/v1/export-defaults", json={"export_to": "archive, pacs"})
    assert chosen.status_code == 200 and chosen.get_json() == {"export_to": ["archive", "pacs"]}

    def export_to(**fields):
        job = submit(client, **fields).get_json()["id"]
        return client.get(f"/v1/jobs/{job}").get_json()["export_to"]

    assert export_to() == ["archive", "pacs"]  # none named: the owner's defaults
    assert export_to(export_to="pacs") == ["pacs"]  # named: the job's own
    assert export_to(export_to="none") == []  # named as none
    assert export_to(export_to="") == ["archive", "pacs"]  # an empty field is an absent one
    other = authorised(app.test_client(), create_api_key(app_config["DATABASE_URL"], "bob"))
    assert other.get("/v1/export-defaults").get_json() == {"export_to": []}  # per owner
    assert admin.delete("/v1/destinations/archive").status_code == 204
    assert client.get("/v1/export-defaults").get_json() == {"export_to": ["pacs"]}
    assert export_to() == ["pacs"]
    cleared = client.put("/v1/export-defaults", data={"export_to": "none"})
    assert cleared.status_code == 200 and cleared.get_json() == {"export_to": []}
    assert export_to() == []


@pytest.mark.integration
def test_the_cli_shows_and_sets_an_owners_defaults(app_config, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main

    monkeypatch.setenv("DATABASE_URL", app_config["DATABASE_URL"])
    monkeypatch.setenv("REDIS_URL", app_config["REDIS_URL"])
    runner = CliRunner()
    shown = runner.invoke(main, ["exports", "defaults", "radiology"])
    assert shown.exit_code == 0 and "radiology has no default destinations" in shown.output
    refused = runner.invoke(main, ["exports", "defaults", "radiology", "--set", "nowhere"])
    assert refused.exit_code != 0 and "'nowhere'" in refused.output

"""``/v1/models`` and jobs pinned to a model, against a real database and Redis (no worker)."""

import io

import pytest

from db.models import Model
from db.registry import add_model, get_model, set_default
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.integration


def register(database_url, name, version, default=False, sha="d" * 64):
    engine = make_engine(database_url)
    with make_session_factory(engine).begin() as session:
        add_model(
            session,
            Model(
                name=name,
                version=version,
                sha256=sha,
                format="keras2-h5",
                input_height=32,
                input_width=32,
                classes=["COVID", "NonCOVID"],
                positive_class="COVID",
                preprocessing="seed-v1",
                trained=True,
                source="test",
                report={"accuracy": 0.9},
                stored_path=f"{name}/{version}/m.h5",
            ),
            make_default=default,
        )
    engine.dispose()


def make_default(database_url, ref):
    engine = make_engine(database_url)
    with make_session_factory(engine).begin() as session:
        set_default(session, get_model(session, ref))
    engine.dispose()


def submit(client, **form):
    from tests.images import png_bytes

    return client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(32)), "a.png")], **form},
        content_type="multipart/form-data",
    )


def test_without_models_the_list_says_jobs_run_untrained(client):
    body = client.get("/v1/models").get_json()
    assert body["models"] == [] and body["default"] is None
    assert "resnet50-untrained" in body["note"]
    job = submit(client).get_json()
    assert job["model"] is None  # filled in by the worker with the untrained identity


def test_models_are_listed_with_the_default_marked(client, app_config):
    register(app_config["DATABASE_URL"], "alpha", "1")
    register(app_config["DATABASE_URL"], "beta", "2", default=True, sha="e" * 64)
    body = client.get("/v1/models").get_json()
    assert body["default"] == "beta:2"
    assert [(m["name"], m["default"]) for m in body["models"]] == [("alpha", False), ("beta", True)]
    assert body["models"][0]["created_at"].endswith("Z")
    assert client.get("/v1/models/alpha:1/report").get_json() == {"accuracy": 0.9}
    assert client.get("/v1/models/gamma").status_code == 404


def test_a_job_is_pinned_to_the_model_it_names_or_to_the_default(client, app_config):
    url = app_config["DATABASE_URL"]
    register(url, "alpha", "1")
    register(url, "beta", "2", default=True, sha="e" * 64)
    named = submit(client, model="alpha").get_json()
    assert named["model"] == {"name": "alpha", "version": "1", "sha256": "d" * 64, "trained": True}
    by_default = submit(client).get_json()
    make_default(url, "alpha:1")
    again = client.get(f"/v1/jobs/{by_default['id']}").get_json()
    assert again["model"]["name"] == "beta" and again["model"]["version"] == "2"


@pytest.mark.parametrize("ref", ["nosuch", "alpha:9", "alpha:"])
def test_an_unknown_model_is_400_naming_it_and_nothing_is_kept(client, app_config, ref):
    register(app_config["DATABASE_URL"], "alpha", "1")
    before = client.get("/v1/jobs").get_json()["jobs"]
    response = submit(client, model=ref)
    assert response.status_code == 400
    body = response.get_json()
    assert repr(ref) in body["detail"] and body["model"] == ref
    assert client.get("/v1/jobs").get_json()["jobs"] == before

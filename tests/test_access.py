"""Who may see what: keys, scopes and per-owner isolation, route by route, against a real
database and Redis (no worker: jobs stay queued).

The route matrices enumerate the app's url_map, so a route added without a scope or an
ownership check makes them fail.
"""

import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from api import create_app
from db.keys import revoke_key
from db.models import ApiKey
from db.session import make_engine, make_session_factory
from tests.conftest import authorised, create_api_key
from tests.dicom_files import ct_bytes
from tests.images import png_bytes

pytestmark = pytest.mark.integration

# Route arguments that name something an owner owns (a series is a job's), and those that
# do not.
OWNED_ARGUMENTS = {"job_id", "scan_id", "webhook_id", "series_uid", "retrieval_id"}
# Registered models; static files; destinations (admin only).
UNOWNED_ARGUMENTS = {"ref", "filename", "name"}
PUBLIC_ENDPOINTS = {
    "health.healthz",
    "health.readyz",
    "static",
    "web.login_page",
    "web.login",
    "docs.openapi_json",
    "docs.docs_page",
    "docs.docs_asset",
}


def _routes():
    app = create_app({"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})
    return [
        (rule.endpoint, rule.rule, method, frozenset(rule.arguments))
        for rule in app.url_map.iter_rules()
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]


ROUTES = _routes()
OWNED_ROUTES = [r for r in ROUTES if r[3] & OWNED_ARGUMENTS]
GUARDED_ROUTES = [r for r in ROUTES if r[0] not in PUBLIC_ENDPOINTS]


def route_id(route):
    return f"{route[2]} {route[1]}"


def session_factory(database_url):
    return make_session_factory(make_engine(database_url))


def submit(client, *names, extra=(), **form):
    data = {
        "files": [(io.BytesIO(png_bytes(24, seed=i)), name) for i, name in enumerate(names)]
        + list(extra),
        **form,
    }
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


@pytest.fixture
def owners(app, app_config):
    """alice (submit, read) with a job, bob (submit, read), and an administrator."""
    url = app_config["DATABASE_URL"]
    alice = authorised(app.test_client(), create_api_key(url, "alice"))
    bob = authorised(app.test_client(), create_api_key(url, "bob"))
    admin = authorised(app.test_client(), create_api_key(url, "root", "admin"))
    # Open, so that the routes adding parts and sealing serve it; explained, so that every
    # scan route does.
    job = submit(
        alice,
        "a.png",
        "b.png",
        extra=[(io.BytesIO(ct_bytes()), "ct.dcm")],
        explain="gradcam",
        open="true",
    )
    scans = alice.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    dicom = scans[2]
    with session_factory(url).begin() as session:  # a result, so the series has a report
        session.execute(
            text(
                "UPDATE scans SET status = 'succeeded', probability_covid = 0.7, label = 'COVID', "
                "model_name = 'm', model_version = '1', model_sha256 = :sha WHERE id = :id"
            ),
            {"sha": "0" * 64, "id": dicom["scan_id"]},
        )
    webhook = alice.post(
        "/v1/webhooks", json={"url": "https://93.184.215.14/hook", "secret": "whsec_" + "a" * 44}
    ).get_json()
    source = admin.post(
        "/v1/destinations",
        json={"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 9},
    )
    assert source.status_code == 201, source.get_json()
    retrieval = alice.post(
        "/v1/retrievals", json={"source": "pacs", "study_uids": ["1.2.826.0.1.3680043.8.498.1"]}
    )
    assert retrieval.status_code == 202, retrieval.get_json()
    return {
        "alice": alice,
        "bob": bob,
        "admin": admin,
        "retrieval_id": retrieval.get_json()["id"],
        "job_id": job["id"],
        "scan_id": scans[0]["scan_id"],
        "series_uid": dicom["series_uid"],
        "webhook_id": webhook["id"],
        "app": app,
    }


def build(app, endpoint, method, values):
    return app.url_map.bind("localhost").build(endpoint, values, method=method)


def body_for(endpoint) -> dict:
    """What a route needs besides its path to serve its owner (a part needs a file)."""
    if endpoint == "jobs.add_scans":
        return {
            "data": {"files": [(io.BytesIO(png_bytes(24, seed=99)), "more.png")]},
            "content_type": "multipart/form-data",
        }
    return {}


def test_every_route_argument_is_known_to_the_ownership_matrix():
    unknown = {(r[1], a) for r in ROUTES for a in r[3] - OWNED_ARGUMENTS - UNOWNED_ARGUMENTS}
    assert not unknown, f"classify these route arguments as owned or not: {unknown}"
    assert {r[1] for r in OWNED_ROUTES} >= {
        "/v1/jobs/<job_id>",
        "/v1/jobs/<job_id>/results",
        "/v1/scans/<scan_id>/thumbnail",
        "/jobs/<job_id>",
    }


@pytest.mark.parametrize("route", OWNED_ROUTES, ids=route_id)
def test_another_owners_job_or_scan_is_404_on_every_route(owners, route):
    endpoint, _rule, method, arguments = route
    values = {name: owners[name] for name in arguments & OWNED_ARGUMENTS}
    path = build(owners["app"], endpoint, method, values)
    other = owners["bob"].open(path, method=method)
    assert other.status_code == 404, (path, other.status_code)
    assert owners["alice"].get(f"/v1/jobs/{owners['job_id']}").status_code == 200
    mine = owners["alice"].open(path, method=method, **body_for(endpoint))
    assert mine.status_code < 400, (path, mine.status_code)  # the route does serve its owner
    missing = owners["bob"].open(
        build(owners["app"], endpoint, method, {name: "0" * 32 for name in values}), method=method
    )
    assert missing.status_code == 404
    other_body = other.get_data()
    for value in values.values():
        other_body = other_body.replace(str(value).encode(), b"")
    assert missing.get_data().replace(b"0" * 32, b"") == other_body  # the same answer


@pytest.mark.parametrize("route", OWNED_ROUTES, ids=route_id)
def test_an_administrator_reaches_every_owners_job(owners, route):
    endpoint, _rule, method, arguments = route
    values = {name: owners[name] for name in arguments & OWNED_ARGUMENTS}
    assert (
        owners["admin"]
        .open(build(owners["app"], endpoint, method, values), method=method, **body_for(endpoint))
        .status_code
        < 400
    )


@pytest.mark.parametrize("route", GUARDED_ROUTES, ids=route_id)
def test_every_route_but_the_public_ones_needs_a_key(app, route):
    endpoint, _rule, method, arguments = route
    path = build(app, endpoint, method, {name: "x" * 8 for name in arguments})
    response = app.test_client().open(path, method=method)
    if endpoint.startswith("web.") and method == "GET":
        assert response.status_code == 303 and "/login?next=" in response.headers["Location"]
    else:
        assert response.status_code == 401 and response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("route", GUARDED_ROUTES, ids=route_id)
def test_every_route_declares_its_scope(app, route):
    view = app.view_functions[route[0]]
    assert getattr(view, "required_scope", None) is not None, (
        f"{route_id(route)}: decorate the view with api.auth.requires(...) or public"
    )


def test_job_lists_show_the_owners_jobs_across_their_keys_and_everything_to_admins(
    owners, app_config
):
    second_key = authorised(
        owners["app"].test_client(), create_api_key(app_config["DATABASE_URL"], "alice")
    )
    other = submit(second_key, "c.png")
    theirs = submit(owners["bob"], "d.png")
    ids = lambda client: {j["id"] for j in client.get("/v1/jobs").get_json()["jobs"]}  # noqa: E731
    assert ids(owners["alice"]) == {owners["job_id"], other["id"]}
    assert ids(owners["bob"]) == {theirs["id"]}
    assert ids(owners["admin"]) == {owners["job_id"], other["id"], theirs["id"]}
    page = owners["bob"].get("/jobs").get_data(as_text=True)
    assert theirs["id"] in page and owners["job_id"] not in page


def _key_states(database_url):
    """Four keys the API must refuse alike: unknown, revoked, expired, malformed."""
    revoked = create_api_key(database_url, "carol")
    expired = create_api_key(
        database_url, "carol", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with session_factory(database_url).begin() as session:
        revoke_key(session, revoked)
    valid = create_api_key(database_url, "carol")
    unknown = "csk_" + "0" * 16 + valid.split("_", 2)[2]
    wrong_secret = valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB")
    return {
        "unknown": unknown,
        "revoked": revoked,
        "expired": expired,
        "wrong secret": wrong_secret,
        "malformed": "not-a-key",
        "valid": valid,
    }


def test_unknown_revoked_expired_and_wrong_keys_get_the_same_401(app, app_config):
    keys = _key_states(app_config["DATABASE_URL"])
    answers = {}
    for state, key in keys.items():
        response = authorised(app.test_client(), key).get("/v1/jobs")
        answers[state] = (
            response.status_code,
            response.get_data(),
            response.headers.get("WWW-Authenticate"),
        )
    assert answers.pop("valid")[0] == 200
    assert len(set(answers.values())) == 1, answers
    assert next(iter(answers.values()))[0] == 401


def test_only_the_hash_of_a_secret_is_stored(app_config):
    key = create_api_key(app_config["DATABASE_URL"], "dave")
    secret = key.split("_", 2)[2]
    engine = make_engine(app_config["DATABASE_URL"])
    with engine.connect() as conn:
        stored = [str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row]
    engine.dispose()
    assert not any(secret in value for value in stored)
    with session_factory(app_config["DATABASE_URL"])() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.owner == "dave")).one()
    assert len(row.secret_sha256) == 64 and key.startswith(f"csk_{row.id}_")


@pytest.mark.parametrize(
    "scopes, method, path, status",
    [
        ("read", "POST", "/v1/jobs", 403),
        ("submit", "GET", "/v1/jobs", 403),
        ("submit,read", "GET", "/v1/audit", 403),
        ("read", "GET", "/v1/models", 200),
        ("submit", "GET", "/v1/models", 200),
        ("admin", "GET", "/v1/audit", 200),
    ],
)
def test_scopes(app, app_config, scopes, method, path, status):
    client = authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], "erin", scopes)
    )
    response = client.open(path, method=method, data={}, content_type="multipart/form-data")
    assert response.status_code == status
    if status == 403:
        assert "scope" in response.get_json()["detail"]


def test_auth_off_serves_loopback_only_and_says_so(app_config, caplog):
    app = create_app({**app_config, "AUTH": "off"})
    assert "AUTH=off" in caplog.text and "NO AUTHENTICATION" in caplog.text
    assert app.test_client().get("/v1/jobs").status_code == 200
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "10.1.2.3"
    assert remote.get("/v1/jobs").status_code == 403


def test_auth_off_is_refused_unless_the_api_binds_to_loopback():
    from covidscan.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="API_HOST"):
        load_settings({"AUTH": "off", "API_HOST": "0.0.0.0"})
    assert not load_settings({"AUTH": "off", "API_HOST": "::1"}).auth_enabled


def test_make_run_creates_one_administrators_key_and_keeps_it_private(tmp_path, database_url):
    from covidscan.settings import load_settings
    from devtools.devstack import ensure_admin_key, saved_key_works

    settings = load_settings(
        {"DATABASE_URL": database_url, "API_KEY_FILE": str(tmp_path / "var" / "api-key")}
    )
    key = ensure_admin_key(settings)
    assert key is not None and settings.api_key_file.read_text().strip() == key
    assert settings.api_key_file.stat().st_mode & 0o777 == 0o600
    assert saved_key_works(settings)
    assert ensure_admin_key(settings) is None  # the next start keeps it
    with session_factory(database_url).begin() as session:
        row = revoke_key(session, key)
        assert (row.owner, row.scopes) == ("admin", "admin")
    assert not saved_key_works(settings)  # make run then says so

"""The web page's sign-in: a session cookie, CSRF tokens, and keys that stop working,
through the Flask test client against a real database and Redis."""

import io
import re

import pytest

from db.keys import revoke_key
from db.session import make_engine, make_session_factory
from tests.conftest import create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.integration


def sign_in(client, key, next_path="/"):
    """Through the form, as the browser does: GET the form, POST it with its token."""
    form = client.get(f"/login?next={next_path}").get_data(as_text=True)
    token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
    return client.post("/login", data={"login_token": token, "api_key": key, "next": next_path})


def csrf_of(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def upload(client, **headers):
    return client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(16)), "a.png")]},
        content_type="multipart/form-data",
        headers=headers,
    )


@pytest.fixture
def key(app_config):
    return create_api_key(app_config["DATABASE_URL"], "frank")


def test_pages_ask_for_a_key_once_then_keep_a_session(app, key):
    browser = app.test_client()
    first = browser.get("/jobs")
    assert first.status_code == 303 and first.headers["Location"] == "/login?next=/jobs"
    signed_in = sign_in(browser, key, "/jobs")
    assert signed_in.status_code == 303 and signed_in.headers["Location"] == "/jobs"
    cookie = signed_in.headers["Set-Cookie"]
    assert "covidscan_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    assert browser.get("/jobs").status_code == 200
    assert browser.get("/v1/jobs").status_code == 200  # the page's scripts use the same session


def test_the_cookie_is_secure_under_tls(app, key):
    tls = app.test_client()
    form = tls.get("/login", base_url="https://localhost").get_data(as_text=True)
    token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
    response = tls.post(
        "/login", base_url="https://localhost", data={"login_token": token, "api_key": key}
    )
    assert response.status_code == 303 and "Secure" in response.headers["Set-Cookie"]


def test_a_state_changing_request_needs_the_pages_csrf_token(app, key):
    browser = app.test_client()
    sign_in(browser, key)
    page = browser.get("/").get_data(as_text=True)
    refused = upload(browser)
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["detail"]
    assert upload(browser, **{"X-CSRF-Token": "forged"}).status_code == 403
    assert upload(browser, **{"X-CSRF-Token": csrf_of(page)}).status_code == 202


def test_sign_in_needs_the_forms_own_token_and_a_valid_key(app, key):
    browser = app.test_client()
    browser.get("/login")
    forged = browser.post("/login", data={"login_token": "guessed", "api_key": key})
    assert forged.status_code == 403 and "covidscan_session" not in forged.headers.get(
        "Set-Cookie", ""
    )
    wrong = sign_in(browser, key[:-3] + "xyz")
    assert wrong.status_code == 401 and "not valid" in wrong.get_data(as_text=True)


def test_sign_in_never_sends_the_browser_to_another_site(app, key):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert sign_in(app.test_client(), key, target).headers["Location"] == "/"


def test_revoking_the_key_ends_its_sessions_and_signing_out_ends_one(app, app_config, key):
    browser, other = app.test_client(), app.test_client()
    sign_in(browser, key)
    sign_in(other, key)
    token = csrf_of(browser.get("/").get_data(as_text=True))
    assert browser.post("/logout", data={"csrf_token": token}).status_code == 303
    assert browser.get("/v1/jobs").status_code == 401
    assert other.get("/v1/jobs").status_code == 200
    engine = make_engine(app_config["DATABASE_URL"])
    with make_session_factory(engine).begin() as session:
        revoke_key(session, key.split("_")[1])
    engine.dispose()
    assert other.get("/v1/jobs").status_code == 401


def test_signing_out_needs_the_token_too(app, key):
    browser = app.test_client()
    sign_in(browser, key)
    assert browser.post("/logout").status_code == 403
    assert browser.get("/v1/jobs").status_code == 200


def test_the_sign_in_form_refuses_an_address_after_too_many_wrong_keys(app_config, key):
    from api import create_app

    app = create_app({**app_config, "FAILED_AUTH_LIMIT": "2/minute"})
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    assert [sign_in(browser, "csk_wrong").status_code for _ in range(2)] == [401, 401]
    refused = sign_in(browser, key)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "too many failed sign-ins" in refused.get_data(as_text=True)
    local = app.test_client()  # loopback (this host) is never counted
    assert [sign_in(local, "csk_wrong").status_code for _ in range(3)] == [401] * 3
    assert sign_in(local, key).status_code == 303

"""The OpenAPI document: complete, valid, committed as generated, and served with its page.

The live checks of the document against the running API are in tests/test_openapi_stack.py.
"""

import io
import json
import re
from html.parser import HTMLParser

import jsonschema
import pytest

from api import create_app
from api.auth import PUBLIC
from api.openapi import build_spec, spec_text, undocumented_rules
from tests.conftest import ROOT, authorised, create_api_key
from tests.images import png_bytes

COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "run `make openapi` (or `covidscan openapi > docs/openapi.json`) and commit it"


@pytest.fixture(scope="module")
def offline_app():
    """The app with settings that connect nowhere: building the document needs no service."""
    return create_app({"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})


@pytest.fixture(scope="module")
def spec(offline_app):
    return build_spec(offline_app)


def api_routes(app):
    return [
        (rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
    ]


def test_the_committed_copy_is_what_the_code_generates(offline_app):
    assert COMMITTED.exists(), f"docs/openapi.json is missing: {REGENERATE}"
    assert COMMITTED.read_text() == spec_text(offline_app), (
        f"docs/openapi.json differs from the API the code serves: {REGENERATE}"
    )


def test_every_v1_route_is_in_the_document(offline_app, spec):
    assert not undocumented_rules(offline_app), (
        "describe these routes with @api.openapi.operation(...) (docs/develop/routes.md, "
        f"'Describing a new route'): {undocumented_rules(offline_app)}"
    )
    routes = api_routes(offline_app)
    assert len(routes) >= 11
    for rule, method in routes:
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert method.lower() in spec["paths"].get(path, {}), f"{method} {rule.rule}"


def test_an_undescribed_route_is_reported(offline_app):
    app = create_app({"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:1/0"})
    app.add_url_rule("/v1/undescribed/<thing>", "undescribed", lambda thing: thing, methods=["PUT"])
    assert undocumented_rules(app) == ["PUT /v1/undescribed/<thing>"]
    assert undocumented_rules(offline_app) == []


def test_the_document_is_valid_openapi_3_1(spec):
    from schemathesis.specs.openapi.definitions import OPENAPI_31  # the OAS 3.1 meta-schema

    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(spec)
    ]
    assert not errors, errors
    assert spec["openapi"] == "3.1.0"
    refs = set(re.findall(r'"#/components/(\w+)/(\w+)"', json.dumps(spec)))
    missing = {(kind, name) for kind, name in refs if name not in spec["components"][kind]}
    assert not missing, f"dangling references: {missing}"


def test_security_and_errors_follow_the_views_declared_scopes(offline_app, spec):
    for rule, method in api_routes(offline_app):
        view = offline_app.view_functions[rule.endpoint]
        path = re.sub(r"<([^<>]+)>", r"{\1}", rule.rule)
        operation = spec["paths"][path][method.lower()]
        assert view.required_scope != PUBLIC
        assert {"apiKey", "browserSession"} == {
            name for req in operation["security"] for name in req
        }
        assert {"400", "401", "403", "429"} <= set(operation["responses"]), (method, path)
        if rule.arguments:
            assert "404" in operation["responses"], (method, path)
    submit = spec["paths"]["/v1/jobs"]["post"]
    assert submit["security"] == [{"apiKey": ["submit"]}, {"browserSession": ["submit"]}]
    assert {"413", "415", "202"} <= set(submit["responses"])
    form = submit["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == []  # files may follow in parts when `open`
    assert form["schema"]["properties"]["open"]["type"] == "boolean"
    part = spec["paths"]["/v1/jobs/{job_id}/scans"]["post"]
    assert {"202", "404", "409", "413", "415"} <= set(part["responses"])
    assert part["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["files"]
    assert spec["paths"]["/v1/jobs/{job_id}/seal"]["post"]["security"] == submit["security"]
    priority = form["schema"]["properties"]["priority"]
    assert priority["enum"] == ["high", "normal", "low", ""]  # empty means the default
    assert priority["default"] == "normal"
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert spec["paths"]["/v1/audit"]["get"]["x-required-scope"] == "admin"


def test_errors_are_problem_documents(spec):
    for status, response in spec["components"]["responses"].items():
        assert list(response["content"]) == ["application/problem+json"], status
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "status", "title", "detail"}


class _Assets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.inline_scripts = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            if attrs.get("src"):
                self.urls.append(attrs["src"])
            else:
                self.inline_scripts += 1
        elif tag == "link" and attrs.get("rel") == "stylesheet":
            self.urls.append(attrs["href"])


def test_the_document_and_the_docs_page_are_served_without_a_key_or_another_site(offline_app, spec):
    client = offline_app.test_client()
    served = client.get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == spec
    page = client.get("/docs")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assets = _Assets()
    assets.feed(page.get_data(as_text=True))
    assert assets.inline_scripts == 0
    assert any("swagger-ui-bundle.js" in url for url in assets.urls)
    for url in assets.urls + ["/docs/assets/LICENSE"]:
        assert url.startswith("/"), f"{url} is not served by this site"
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.get_data()) > 100, url
    assert b"Apache License" in client.get("/docs/assets/LICENSE").get_data()
    assert client.get("/docs/assets/../../__init__.py").status_code == 404


# What the property-based tests found, pinned (tests/test_openapi_stack.py finds them by chance).


@pytest.mark.integration
@pytest.mark.parametrize("query", ["limit=5&limit=7", "limit=5&limit="])
def test_a_query_parameter_given_twice_is_refused(client, query):
    response = client.get(f"/v1/jobs?{query}")
    assert (
        response.status_code == 400
        and "given more than once: limit" in response.get_json()["detail"]
    )
    assert client.get("/v1/jobs?limit=5").status_code == 200


@pytest.mark.integration
def test_results_check_their_paging_arguments_for_csv_too_and_empty_is_the_default(client):
    job = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(24)), "a.png")]},
        content_type="multipart/form-data",
    ).get_json()
    base = f"/v1/jobs/{job['id']}/results"
    assert client.get(f"{base}?format=csv&limit=0").status_code == 400
    assert client.get(f"{base}?format=csv").status_code == 200
    assert client.get(f"{base}?format=").get_json()["results"][0]["filename"] == "a.png"


@pytest.mark.integration
def test_an_audit_cursor_beyond_any_event_id_is_refused(app, app_config):
    admin = authorised(
        app.test_client(), create_api_key(app_config["DATABASE_URL"], "root", "admin")
    )
    for cursor in (2**31, 2**70, -1):
        response = admin.get(f"/v1/audit?cursor={cursor}")
        assert response.status_code == 400 and "cursor" in response.get_json()["detail"]
    assert admin.get(f"/v1/audit?cursor={2**31 - 1}").status_code == 200


def test_a_method_a_route_does_not_serve_is_405_with_the_allowed_ones(offline_app, spec):
    client = offline_app.test_client()
    for path, item in spec["paths"].items():
        url = path.replace("{", "").replace("}", "")
        response = client.open(url, method="TRACE")
        assert response.status_code == 405 and response.mimetype == "application/problem+json"
        allowed = {method.strip() for method in response.headers["Allow"].split(",")}
        assert {method.upper() for method in item} <= allowed, (path, allowed)


@pytest.mark.integration
def test_a_whole_number_with_a_zero_fraction_is_an_integer(client):
    assert client.get("/v1/jobs?limit=300.0").status_code == 200  # JSON Schema's integer
    for bad in ("3.5", "1e2", "ten"):
        response = client.get(f"/v1/jobs?limit={bad}")
        assert response.status_code == 400 and "limit" in response.get_json()["detail"]


@pytest.mark.integration
def test_the_new_routes_check_their_query_and_take_empty_as_the_default(client):
    job = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(24)), "a.png")]},
        content_type="multipart/form-data",
    ).get_json()
    series = f"/v1/jobs/{job['id']}/series"
    assert client.get(f"{series}?slices=maybe").status_code == 400
    assert client.get(f"{series}?slices=1").get_json() == {"series": [], "rule": None}
    assert client.get(f"{series}?slices=").status_code == 200
    # an empty format or view means the default: the unknown scan is what is wrong here
    assert client.get("/v1/scans/nope/heatmap?format=&view=").status_code == 404
    assert client.get("/v1/scans/nope/heatmap?format=gif").status_code == 400

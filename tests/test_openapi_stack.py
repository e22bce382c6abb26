"""Schemathesis against the live stack: the real app on the session's database and Redis,
with the real worker, called with an administrator's API key.

Requests are generated from /openapi.json (valid and invalid parameters, forms and
bodies); every answer must be no 5xx and match the document (status, content type,
headers, body schema). Path parameters are sometimes the ids of a real finished job and
its scans, so the success paths (results, CSV, thumbnails, cancel, delete) are reached,
not only the 404s.
"""
import collections
import io
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api import create_app
from api.openapi import NO_NUL
from tests.conftest import ROOT, authorised, create_api_key, wait_for_job
from tests.images import corrupt_png, png_bytes, zip_bytes

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25  # per operation and mode: a bounded run, not an exhaustive one
# Limits high enough that the generated requests meet the API rather than the rate limiter.
ROOMY_LIMITS = {"RATE_LIMIT": "100000/minute", "SCANS_PER_HOUR": "100000",
                "MAX_ACTIVE_JOBS": "10000"}


def submit_real_job(client) -> dict:
    """Two slices, one that cannot be decoded, and a ZIP with a slice and a skipped entry."""
    archive = zip_bytes([("notes.txt", b"not a slice"), ("z.png", png_bytes(32, seed=9))])
    data = {"files": [(io.BytesIO(png_bytes(32, seed=i)), f"slice-{i}.png") for i in range(2)]
            + [(io.BytesIO(corrupt_png(32)), "broken.png"), (io.BytesIO(archive), "more.zip")],
            "name": "contract"}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


@pytest.fixture(scope="module")
def live(stack_config, worker):
    """The app, an administrator's key, and the ids of a finished job and one of its scans."""
    app = create_app({**stack_config, **ROOMY_LIMITS})
    key = create_api_key(stack_config["DATABASE_URL"], owner="contract", scopes="admin")
    client = authorised(app.test_client(), key)
    job = wait_for_job(client, submit_real_job(client)["id"])
    scans = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    model = client.get("/v1/models").get_json()["default"]  # the worker's MODEL_PATH
    assert model is not None
    return {"app": app, "key": key, "client": client,
            "ids": {"job_id": job["id"], "scan_id": scans[0]["scan_id"], "ref": model}}


@pytest.fixture(scope="module")
def live_schema(live):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", live["app"])
    # The key is sent with every request (below): no generated (or negated) Authorization
    # header or session cookie, which the key would replace and so make a valid request.
    schema.config.generation.update(with_security_parameters=False)
    return schema


def operations():
    """A test per operation of the committed document and generation mode (the tests that
    the document is current and complete are in tests/test_openapi.py); invalid data only
    where there is something to get wrong: a query, a body, or a path parameter with a
    shape (any other text but a NUL, which is never generated, is a valid id)."""
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            modes = [GenerationMode.POSITIVE]
            if any(p["in"] != "path" or p["schema"].get("pattern") != NO_NUL
                   for p in operation["parameters"]) or "requestBody" in operation:
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                yield pytest.param(method.upper(), path, mode,
                                   id=f"{method.upper()} {path} {mode.value}")


def with_real_slices(case):
    """A submission whose parts are slices: a schema cannot generate a PNG that decodes."""
    if isinstance(case.body, dict) and case.body.get("files"):
        case.body["files"] = [png_bytes(24, seed=i) for i in range(len(case.body["files"][:2]))]
    return case


@pytest.mark.parametrize("method, path, mode", operations())
def test_the_api_keeps_its_contract(live, live_schema, method, path, mode):
    operation = live_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    # Valid data: half the time (first, so always in the first example) ids that exist.
    # Invalid data negates the ids themselves.
    real = {name: value for name, value in live["ids"].items()
            if "{" + name + "}" in path and mode is GenerationMode.POSITIVE}
    if method == "DELETE" and real:  # a job of its own, so that the other tests keep theirs
        real["job_id"] = submit_real_job(live["client"])["id"]
    if real:
        strategy = st.one_of(operation.as_strategy(generation_mode=mode, path_parameters=real),
                             strategy)
    excluded = []
    if (method, path) == ("POST", "/v1/jobs"):
        # A valid form still names a model that is not registered, or parts that are not
        # images, as often as not: 400 and 415 there are right answers to valid-looking data.
        excluded.append(positive_data_acceptance)
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(with_real_slices)
    headers = {"Authorization": f"Bearer {live['key']}"}

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    def check(case):
        response = case.call_and_validate(headers=headers, excluded_checks=excluded)
        statuses.append(response.status_code)

    statuses = []
    check()
    if mode is GenerationMode.POSITIVE and path != "/v1/models/{ref}/report":  # none has one
        assert any(200 <= status < 300 for status in statuses), \
            f"no success among {sorted(collections.Counter(statuses).items())}"

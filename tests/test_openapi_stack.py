"""Schemathesis against the live stack: the real app on the session's database and Redis,
with the real worker, called with an administrator's API key.

Requests are generated from /openapi.json (valid and invalid parameters, forms and
bodies); every answer must be no 5xx and match the document (status, content type,
headers, body schema). Path parameters are sometimes the ids of a real finished job and
its scans, so the success paths (results, CSV, thumbnails, cancel, delete) are reached,
not only the 404s.
"""

import base64
import collections
import io
import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from api import create_app
from api.openapi import NO_NUL
from tests.conftest import ROOT, authorised, create_api_key, wait_for_job
from tests.dicom_files import ct_bytes
from tests.images import corrupt_png, png_bytes, zip_bytes

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25  # per operation and mode: a bounded run, not an exhaustive one
# Limits high enough that the generated requests meet the API rather than the rate limiter.
ROOMY_LIMITS = {
    "RATE_LIMIT": "100000/minute",
    "SCANS_PER_HOUR": "100000",
    "MAX_ACTIVE_JOBS": "10000",
    # the ignored-auth check calls every operation with a wrong key too
    "FAILED_AUTH_LIMIT": "100000/minute",
    "WEBHOOK_SECRET": "whsec_" + "a" * 44,  # webhooks without a secret of their own
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
}  # where the test registers them
PUBLIC_URL = "http://127.0.0.1:9/hook"  # allowed below; an address literal needs no DNS
STOW = 'multipart/related; type="application/dicom"'
STOW_BOUNDARY = "contract-boundary"


@schemathesis.serializer(STOW)
def stow_body(ctx, value):
    """A generated STOW body as bytes (valid-data runs replace it with a real instance)."""
    return value if isinstance(value, bytes) else str(value).encode()


def submit_real_job(client, **fields) -> dict:
    """Two slices, one that cannot be decoded, a ZIP with a slice and a skipped entry, and a
    DICOM CT slice (a series)."""
    archive = zip_bytes([("notes.txt", b"not a slice"), ("z.png", png_bytes(32, seed=9))])
    data = {
        "files": [(io.BytesIO(png_bytes(32, seed=i)), f"slice-{i}.png") for i in range(2)]
        + [
            (io.BytesIO(corrupt_png(32)), "broken.png"),
            (io.BytesIO(archive), "more.zip"),
            (io.BytesIO(ct_bytes()), "ct.dcm"),
        ],
        "name": "contract",
        **fields,
    }
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def open_real_job(client) -> str:
    """An open job holding one slice: it takes parts and can be sealed."""
    response = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(png_bytes(32)), "a.png")], "open": "true"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.fixture(scope="module")
def live(stack_config, worker):
    """The app, an administrator's key, and the ids of a finished job and one of its scans."""
    # A PHI_KEY, so that destinations with credentials can be registered.
    phi_key = base64.b64encode(os.urandom(32)).decode()
    app = create_app({**stack_config, **ROOMY_LIMITS, "PHI_KEY": phi_key})
    key = create_api_key(stack_config["DATABASE_URL"], owner="contract", scopes="admin")
    client = authorised(app.test_client(), key)
    # Every scan explained, so that the explanation and heatmap routes have one to show.
    job = wait_for_job(client, submit_real_job(client, explain="gradcam")["id"])
    scans = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    model = client.get("/v1/models").get_json()["default"]  # the worker's MODEL_PATH
    assert model is not None
    series_uid = next(row["series_uid"] for row in scans if row["series_uid"])
    retrieval = client.post(
        "/v1/retrievals", json={"source": some_destination(client), "study_uids": ["1.2.3"]}
    )
    assert retrieval.status_code == 202, retrieval.get_json()
    return {
        "app": app,
        "key": key,
        "client": client,
        "ids": {
            "job_id": job["id"],
            "scan_id": scans[0]["scan_id"],
            "ref": model,
            "series_uid": series_uid,
            "retrieval_id": retrieval.get_json()["id"],
        },
    }


def some_destination(client) -> str:
    """The name of a registered destination (the POST test registers many, the DELETE
    test removes them)."""
    destinations = client.get("/v1/destinations").get_json()["destinations"]
    if destinations:
        return destinations[0]["name"]
    response = client.post(
        "/v1/destinations",
        json={
            "name": "contract-pacs",
            "kind": "dicom",
            "ae_title": "PACS",
            "host": "pacs",
            "port": 104,
        },
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["name"]


def some_webhook(client) -> str:
    """The id of one of the key's webhook endpoints (the POST test registers many)."""
    webhooks = client.get("/v1/webhooks").get_json()["webhooks"]
    if webhooks:
        return webhooks[0]["id"]
    response = client.post("/v1/webhooks", json={"url": PUBLIC_URL})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


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
            if (
                any(
                    p["in"] != "path" or p["schema"].get("pattern") != NO_NUL
                    for p in operation["parameters"]
                )
                or "requestBody" in operation
            ):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                yield pytest.param(
                    method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}"
                )


def with_real_slices(case):
    """A submission whose parts are slices: a schema cannot generate a PNG that decodes (nor
    a callback_url that resolves to a public address)."""
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        # One or two slices (files may be left out of a valid form only when it is `open`).
        count = min(2, max(1, len(case.body.get("files") or ())))
        case.body["files"] = [png_bytes(24, seed=i) for i in range(count)]
        case.body.pop("callback_url", None)
    return case


def with_public_url(case):
    """A webhook URL that passes the address check (a generated host does not resolve)."""
    if isinstance(case.body, dict):
        case.body["url"] = PUBLIC_URL + str(len(str(case.body)))
    return case


def with_real_instance(case):
    """A STOW-RS body of a real CT instance, with its boundary (a schema can say neither)."""
    case.body = (
        f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + ct_bytes()
        + f"\r\n--{STOW_BOUNDARY}--\r\n".encode()
    )
    case.headers = {**(case.headers or {}), "Content-Type": f"{STOW}; boundary={STOW_BOUNDARY}"}
    return case


def with_source(case, name):
    """A registered destination as the source (a generated name is none), and one of the
    two lists (a schema cannot say "exactly one of")."""
    if isinstance(case.body, dict):
        case.body["source"] = name
        if case.body.get("accession_numbers") and case.body.get("study_uids"):
            del case.body["study_uids"]
    return case


def with_export_to(case, name):
    """A registered destination's name as the owner's default (a generated name is none)."""
    if isinstance(case.body, dict):
        case.body["export_to"] = name
    return case


@pytest.mark.parametrize("method, path, mode", operations())
def test_the_api_keeps_its_contract(live, live_schema, method, path, mode):
    operation = live_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    # Valid data: half the time (first, so always in the first example) ids that exist.
    # Invalid data negates the ids themselves.
    real = {
        name: value
        for name, value in live["ids"].items()
        if "{" + name + "}" in path and mode is GenerationMode.POSITIVE
    }
    if method == "DELETE" and "job_id" in real:  # its own, so that the other tests keep theirs
        real["job_id"] = submit_real_job(live["client"])["id"]
    if path in ("/v1/jobs/{job_id}/scans", "/v1/jobs/{job_id}/seal") and "job_id" in real:
        real["job_id"] = open_real_job(live["client"])  # the finished job takes no parts
    if "{webhook_id}" in path and mode is GenerationMode.POSITIVE:
        real["webhook_id"] = some_webhook(live["client"])
    if path == "/v1/destinations/{name}" and mode is GenerationMode.POSITIVE:
        real["name"] = some_destination(live["client"])
    source = (
        some_destination(live["client"])
        if path in ("/v1/retrievals", "/v1/export-defaults")
        else None
    )
    if real:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=mode, path_parameters=real), strategy
        )
    excluded = []
    # A valid form still names a model that is not registered, or parts that are not
    # images, as often as not; a two-step upload is refused by the folder store (415); a
    # webhook URL must resolve to a public address; a STOW body must hold DICOM instances;
    # a started job cannot be started by other ids; destinations are named by registered
    # names: 4xx there are right answers to valid-looking data.
    fix = {
        ("POST", "/v1/jobs"): with_real_slices,
        ("POST", "/v1/webhooks"): with_public_url,
        ("POST", "/v1/jobs/{job_id}/scans"): with_real_slices,
        ("POST", "/v1/dicomweb/studies"): with_real_instance,
        ("POST", "/v1/jobs/{job_id}/start"): None,
        ("POST", "/v1/retrievals"): lambda case: with_source(case, source),
        ("PUT", "/v1/export-defaults"): lambda case: with_export_to(case, source),
    }
    if (method, path) in fix:
        excluded.append(positive_data_acceptance)
        if mode is GenerationMode.POSITIVE and fix[method, path] is not None:
            strategy = strategy.map(fix[method, path])
    if (method, path, mode) == ("POST", "/v1/dicomweb/studies", GenerationMode.POSITIVE):
        excluded.append(negative_data_rejection)  # its body is ours (a real instance), which
        # the check takes for generated data that broke the schema
    headers = {"Authorization": f"Bearer {live['key']}"}

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    def check(case):
        response = case.call_and_validate(headers=headers, excluded_checks=excluded)
        statuses.append(response.status_code)

    statuses = []
    check()
    if mode is GenerationMode.POSITIVE and path != "/v1/models/{ref}/report":  # none has one
        assert any(200 <= status < 300 for status in statuses), (
            f"no success among {sorted(collections.Counter(statuses).items())}"
        )

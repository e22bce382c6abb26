"""Hostile requests on the API's newer surfaces, through the Flask test client with a real
database and Redis: each answers the exact status (a 4xx problem, never a 500), and a
normal request succeeds afterwards.

Classes: a hostile DICOM slice's thumbnail; the DICOM SR route (headers a report cannot
copy as they are, UIDs with CR LF); sign-in ``next=`` with control characters; JSON
nested too deeply, on every route that reads JSON.
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from pathlib import Path

import pydicom
import pytest

from tests import hostile_slices as h
from tests.conftest import authorised, create_api_key
from tests.dicom_files import ct_bytes, ct_dataset, to_bytes

pytestmark = pytest.mark.database


def submit(client, items: dict[str, bytes]) -> dict:
    data = {"files": [(io.BytesIO(d), n) for n, d in items.items()]}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def rows_of(client, job_id: str) -> dict[str, dict]:
    rows = client.get(f"/v1/jobs/{job_id}/results").get_json()["results"]
    return {row["filename"]: row for row in rows}


def classify_all(database_url: str, probability: float = 0.8) -> None:
    """What a worker would write: every waiting scan succeeds with ``probability``."""
    from db.identity import ModelIdentity
    from db.scans import ScanOutcome, claim_next, write_outcomes
    from db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    identity = ModelIdentity("tiny", "1", "a" * 64, True, "test", "fp32", "seed-v1")
    try:
        with make_session_factory(engine).begin() as session:
            leases = claim_next(session, "test/1", 100, 60)
            outcomes = [
                ScanOutcome(
                    lease.scan_id,
                    probability_covid=probability,
                    label="COVID",
                    preprocessing="seed-v1",
                )
                for lease in leases
            ]
            write_outcomes(session, outcomes, leases, identity, "w@test", "test/1")
    finally:
        engine.dispose()


# --- A hostile DICOM slice's thumbnail: the placeholder with the worker's reason ---------


def test_a_hostile_slice_has_the_placeholder_thumbnail_with_its_reason(client, app_config):
    from api.thumbnails import placeholder_png

    names = ("slope-abc", "slope-two-values", "slope-nan", "padding-two-values")
    job = submit(
        client,
        {
            "good.dcm": ct_bytes(),
            "deflated.dcm": h.deflated_ct(),
            **{f"{name}.dcm": h.bad_slice(name) for name in names},
        },
    )
    rows = rows_of(client, job["id"])
    for name in names:
        response = client.get(f"/v1/scans/{rows[f'{name}.dcm']['scan_id']}/thumbnail")
        assert response.status_code == 200, (name, response.get_json())
        assert response.mimetype == "image/png" and response.data == placeholder_png()
    reasons = sorted(p.read_text() for p in Path(app_config["BLOB_DIR"]).rglob("*.thumb.failed"))
    assert len(reasons) == len(names)
    for name in names:  # cached with the reason the worker gives, so it is not decoded again
        assert any(h.BAD_SLICES[name][3] in reason for reason in reasons), (name, reasons)
    for name in ("good.dcm", "deflated.dcm"):  # a Deflated slice has its preview too
        response = client.get(f"/v1/scans/{rows[name]['scan_id']}/thumbnail")
        assert response.status_code == 200 and response.mimetype == "image/jpeg", name


def test_a_stored_deflated_bomb_is_refused_within_the_limit_by_thumbnail_and_report(
    app_config, api_key
):
    """Bytes in the store that the intake would now refuse (stored before, or another way):
    the thumbnail and the report inflate at most MAX_SCAN_BYTES of them."""
    from api import create_app
    from api.thumbnails import placeholder_png

    client = authorised(
        create_app({**app_config, "MAX_SCAN_BYTES": str(2 * 1024 * 1024)}).test_client(), api_key
    )
    job = submit(client, {"deflated.dcm": h.deflated_ct()})
    classify_all(app_config["DATABASE_URL"])
    (row,) = rows_of(client, job["id"]).values()
    report = client.get(f"/v1/jobs/{job['id']}/series/{row['series_uid']}/sr")
    assert report.status_code == 200  # a Deflated slice's report, as any other's
    (Path(app_config["BLOB_DIR"]) / job["id"] / "000000").write_bytes(
        h.deflate_bomb(64 * 1024 * 1024)
    )
    thumbnail = client.get(f"/v1/scans/{row['scan_id']}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.data == placeholder_png()
    (failed,) = Path(app_config["BLOB_DIR"]).rglob("*.thumb.failed")
    assert "inflates to more than 2097152 bytes (MAX_SCAN_BYTES)" in failed.read_text()
    report = client.get(f"/v1/jobs/{job['id']}/series/{row['series_uid']}/sr")
    assert report.status_code == 422
    assert "inflates to more than 2097152 bytes" in report.get_json()["detail"]


# --- The DICOM SR route ---------------------------------------------------------------------


def _variant(change) -> bytes:
    dataset = ct_dataset()
    change(dataset)
    return to_bytes(dataset)


def _without(*keywords):
    def change(dataset):
        for keyword in keywords:
            delattr(dataset, keyword)

    return change


def _setting(**values):
    def change(dataset):
        for keyword, value in values.items():
            setattr(dataset, keyword, value)

    return change


@pytest.mark.parametrize(
    "change",
    [
        _without("SOPClassUID"),  # only in the file meta
        _without("PatientSex"),
        _setting(PatientSex="male"),
        _without("StudyID", "StudyTime"),
        _setting(StudyDate="notadate"),
    ],
    ids=[
        "sop-class-only-in-file-meta",
        "no-patient-sex",
        "patient-sex-male",
        "no-study-id",
        "malformed-study-date",
    ],
)
def test_a_report_is_made_from_headers_it_must_mend(client, app_config, change):
    job = submit(client, {"ct.dcm": _variant(change)})
    classify_all(app_config["DATABASE_URL"])
    (row,) = rows_of(client, job["id"]).values()
    response = client.get(f"/v1/jobs/{job['id']}/series/{row['series_uid']}/sr")
    assert response.status_code == 200, response.get_json()
    report = pydicom.dcmread(io.BytesIO(response.data))
    assert report.Modality == "SR" and report.PatientSex in ("", "M", "F", "O")
    assert (
        str(
            report.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPClassUID
        )
        == "1.2.840.10008.5.1.4.1.1.2"
    )


def test_a_report_its_slices_cannot_reference_is_a_422_and_a_normal_one_follows(client, app_config):
    odd = submit(client, {"ct.dcm": _variant(_setting(SOPClassUID="1.2.826.0.1.3680043.9.1"))})
    classify_all(app_config["DATABASE_URL"])
    (row,) = rows_of(client, odd["id"]).values()
    response = client.get(f"/v1/jobs/{odd['id']}/series/{row['series_uid']}/sr")
    assert response.status_code == 422, response.get_json()
    assert "no report can be made" in response.get_json()["detail"]
    normal = submit(client, {"ct.dcm": ct_bytes()})
    classify_all(app_config["DATABASE_URL"])
    (row,) = rows_of(client, normal["id"]).values()
    assert client.get(f"/v1/jobs/{normal['id']}/series/{row['series_uid']}/sr").status_code == 200


@pytest.mark.parametrize(
    "series_uid", ["1.2.3%0D%0ASet-Cookie:%20x=1", "1.2.3%0A", "1.2.abc", "1" * 65, "1.2.3%22;%20x"]
)
def test_a_series_uid_that_is_not_a_uid_is_a_400(client, app_config, series_uid):
    job = submit(client, {"ct.dcm": ct_bytes()})
    classify_all(app_config["DATABASE_URL"])
    response = client.get(f"/v1/jobs/{job['id']}/series/{series_uid}/sr")
    assert response.status_code == 400
    assert (
        response.get_json()["detail"]
        == "a Series Instance UID is digits and dots, at most 64 characters"
    )
    assert "Set-Cookie" not in response.headers


def test_a_stored_series_uid_with_cr_lf_never_reaches_a_header(client, app_config):
    """A slice whose SeriesInstanceUID holds CR LF: its series cannot be asked for (400) and
    no header is ever built from it; the route's file name is made safe on its own too."""
    from api.series import attachment

    job = submit(
        client, {"ct.dcm": _variant(_setting(SeriesInstanceUID="1.2.3\r\nSet-Cookie: x=1"))}
    )
    classify_all(app_config["DATABASE_URL"])
    listed = client.get(f"/v1/jobs/{job['id']}/series").get_json()["series"]
    for series in listed:
        uid = series["series_uid"] or ""
        response = client.get(f"/v1/jobs/{job['id']}/series/{uid}/sr")
        assert response.status_code in (400, 404), response.status_code
        assert "Set-Cookie" not in response.headers
    assert (
        attachment('a\r\nSet-Cookie: x"; y.dcm')
        == 'attachment; filename="a__Set-Cookie__x___y.dcm"'
    )


# --- Sign-in next= --------------------------------------------------------------------------


def sign_in(client, key: str, next_path: str):
    form = client.get("/login", query_string={"next": next_path})
    assert form.status_code == 200
    token = re.search(r'name="login_token" value="([^"]+)"', form.get_data(as_text=True))
    return client.post(
        "/login", data={"login_token": token.group(1), "api_key": key, "next": next_path}
    )


@pytest.fixture
def web_key(app_config) -> str:
    return create_api_key(app_config["DATABASE_URL"], f"web-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example/",
        "/\n/evil.example/",
        "/\r\n/evil.example/",
        "\t//evil.example/",
        " //evil.example/",
        "/\\\t/evil.example",
        "\x01/\\evil.example",
        "/\t\\evil.example",
        "/\x7f/evil.example",
        "https:\t//evil.example/",
        "java\nscript:alert(1)",
    ],
)
def test_sign_in_next_is_checked_after_normalisation(app, web_key, target):
    response = sign_in(app.test_client(), web_key, target)
    assert response.status_code == 303, response.status_code
    assert response.headers["Location"] == "/"


def test_sign_in_next_keeps_a_path_on_this_site(app, web_key):
    response = sign_in(app.test_client(), web_key, "/jobs/abc?x=1")
    assert response.status_code == 303 and response.headers["Location"] == "/jobs/abc?x=1"


# --- JSON nested too deeply -----------------------------------------------------------------

DEEP = 100_000
OWN_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _deep(kind: str) -> bytes:
    if kind == "array":
        return b"[" * DEEP + b"]" * DEEP
    if kind == "object":
        return b'{"url": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"
    return b'{"files": [' + b"[" * DEEP + b"]" * DEEP + b"]}"


@pytest.mark.parametrize("kind", ["array", "object", "in-a-list"])
def test_json_nested_too_deeply_is_a_400_on_webhooks(app_config, kind):
    from api import create_app

    app = create_app({**app_config, "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"})
    key = create_api_key(app_config["DATABASE_URL"], f"hook-{uuid.uuid4().hex[:6]}")
    client = authorised(app.test_client(), key)
    response = client.post("/v1/webhooks", data=_deep(kind), content_type="application/json")
    assert response.status_code == 400, response.status_code
    assert response.get_json()["detail"] == "the JSON body is nested too deeply"
    normal = client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": OWN_SECRET}
    )
    assert normal.status_code == 201, normal.get_json()


def test_json_nested_too_deeply_is_a_400_on_the_json_job_request(app_config, s3_server):
    from api import create_app

    config = {**app_config, **s3_server.env(prefix=f"deep-{uuid.uuid4().hex[:8]}")}
    key = create_api_key(config["DATABASE_URL"], f"deep-{uuid.uuid4().hex[:6]}")
    client = authorised(create_app(config).test_client(), key)
    for kind in ("array", "in-a-list"):
        response = client.post("/v1/jobs", data=_deep(kind), content_type="application/json")
        assert response.status_code == 400, response.status_code
        assert response.get_json()["detail"] == "the JSON body is nested too deeply"
    normal = client.post("/v1/jobs", json={"files": [{"filename": "a.png", "size": 100}]})
    assert normal.status_code == 201, normal.get_json()

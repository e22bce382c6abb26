"""Hostile DICOM through the API, on the folder store and on a real S3 store: bombs in the
header read (Deflated data sets, frame counts, nesting, element floods) and STOW-RS bodies.

Each case asserts the exact status, that nothing was stored (no job row, no blob), and
that a normal job is accepted afterwards.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api import create_app
from dicomnet.listener import dicom_status
from tests import dicom_bombs as b
from tests import dicom_files as d
from tests.conftest import authorised, create_api_key
from tests.images import png_bytes

pytestmark = pytest.mark.database

MB = 1024 * 1024
LIMITS = {
    "MAX_UPLOAD_BYTES": str(6 * MB),
    "MAX_SCAN_BYTES": str(2 * MB),
    "MAX_EXPANDED_BYTES": str(3 * MB),
    "MAX_SCANS_PER_JOB": "30",
}
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'
CANNOT_UNDERSTAND, NOT_SUPPORTED = 0xC000, 0x0122


@pytest.fixture(params=["folder", "s3"])
def config(request, app_config):
    config = {**app_config, **LIMITS}
    if request.param == "s3":
        s3_server = request.getfixturevalue("s3_server")
        config.update(s3_server.env(prefix=f"hostile-{uuid.uuid4().hex[:8]}"))
    return config


@pytest.fixture
def client(config):
    key = create_api_key(config["DATABASE_URL"], owner=f"mallory-{uuid.uuid4().hex[:6]}")
    return authorised(create_app(config).test_client(), key)


def stored_blobs(config) -> list[str]:
    """Every object in the test's blob store (a folder, or the bucket under its prefix)."""
    if "BLOB_STORE" not in config:
        root = Path(config["BLOB_DIR"])
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    import boto3

    bucket, _, prefix = config["BLOB_STORE"].removeprefix("s3://").partition("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=config["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=config["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=config["AWS_SECRET_ACCESS_KEY"],
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def job_rows(config) -> int:
    from db.models import Job
    from db.session import make_engine, make_session_factory

    engine = make_engine(config["DATABASE_URL"])
    try:
        with make_session_factory(engine)() as session:
            return session.scalar(select(func.count()).select_from(Job))
    finally:
        engine.dispose()


def assert_nothing_stored_and_a_normal_job_follows(client, config) -> None:
    assert stored_blobs(config) == []
    assert job_rows(config) == 0
    normal = client.post(
        "/v1/jobs",
        data={"files": [(b.readable(d.ct_bytes()), "ok.dcm")]},
        content_type="multipart/form-data",
    )
    assert normal.status_code == 202, normal.get_json()
    assert normal.get_json()["counts"]["total"] == 1


def upload(client, *files: tuple[str, bytes]):
    return client.post(
        "/v1/jobs",
        data={"files": [(b.readable(data), name) for name, data in files]},
        content_type="multipart/form-data",
    )


SIXTY_FOUR_MB_BOMB = b.deflate_bomb(64 * MB)
# (id, files, expected status, words the detail must contain)
REFUSED = [
    (
        "deflate-bomb",
        [("bomb.dcm", SIXTY_FOUR_MB_BOMB)],
        413,
        ["bomb.dcm", "Deflated", str(2 * MB), "MAX_SCAN_BYTES"],
    ),
    (
        "deflate-bomb-after-a-good-slice",
        [("ok.dcm", d.ct_bytes()), ("late.dcm", SIXTY_FOUR_MB_BOMB)],
        413,
        ["late.dcm", "MAX_SCAN_BYTES"],
    ),
    (
        "deflate-bomb-in-a-zip",
        [("batch.zip", b.zip_holding(("a/bomb.dcm", SIXTY_FOUR_MB_BOMB)))],
        413,
        ["batch.zip/a/bomb.dcm", "Deflated"],
    ),
    ("deflate-corrupt", [("corrupt.dcm", b.corrupt_deflate())], 400, ["corrupt.dcm", "deflate"]),
    ("deflate-truncated", [("cut.dcm", b.deflated_ct()[:-300])], 400, ["cut.dcm", "truncated"]),
    ("nested-300-explicit", [("nest.dcm", b.nested_sequences(300))], 400, ["nest.dcm", "deep"]),
    (
        "nested-300-implicit",
        [("nest.dcm", b.nested_sequences(300, implicit=True))],
        400,
        ["nest.dcm", "deep"],
    ),
    ("nested-17", [("nest.dcm", b.nested_sequences(17))], 400, ["nest.dcm", "16 deep"]),
    ("element-flood", [("flood.dcm", b.element_flood(30_000))], 413, ["flood.dcm", "elements"]),
    (
        "frames-3-million-in-668-bytes",
        [("frames.dcm", b.tiny_many_frames(3_000_000))],
        413,
        ["frames.dcm", "3000000 frames", "MAX_SCANS_PER_JOB"],
    ),
    (
        "frames-one-over",
        [("frames.dcm", b.many_frames(31))],
        413,
        ["frames.dcm", "31 frames", "30 scans"],
    ),
    (
        "frames-over-what-is-left",
        [("a.dcm", b.tiny_many_frames(20)), ("b.dcm", b.tiny_many_frames(20))],
        413,
        ["b.dcm", "20 frames", "10 left"],
    ),
]


@pytest.mark.parametrize("case, files, status, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_dicom_is_refused_exactly_and_leaves_nothing(
    client, config, case, files, status, words
):
    response = upload(client, *files)
    problem = response.get_json()
    assert response.status_code == status, (case, problem)
    assert response.mimetype == "application/problem+json"
    for word in words:
        assert word in problem["detail"], (case, problem["detail"])
    assert_nothing_stored_and_a_normal_job_follows(client, config)


def test_a_valid_deflated_ct_slice_is_accepted_and_stored_as_sent(client, config):
    data = b.deflated_ct()
    response = upload(client, ("deflated.dcm", data))
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["counts"]["total"] == 1
    [row] = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    assert row["series_uid"] == str(d.ct_dataset().SeriesInstanceUID)
    assert len(stored_blobs(config)) == 1


def stow(client, parts: list[tuple[str, bytes]], query: str = ""):
    body = (
        b"".join(
            b"--XyZ\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + data + b"\r\n"
            for kind, data in parts
        )
        + b"--XyZ--\r\n"
    )
    return client.post(f"/v1/dicomweb/studies{query}", data=body, content_type=STOW_TYPE)


def failures(response) -> list[int]:
    return [
        item["00081197"]["Value"][0]
        for item in response.get_json().get("00081198", {}).get("Value", [])
    ]


def stored_instances(response) -> list[str]:
    return [item["00081155"]["Value"][0] for item in response.get_json()["00081199"]["Value"]]


ZIP_WITH_AN_INSTANCE = b.zip_holding(("ct.dcm", d.ct_bytes()), ("notes.txt", b"hello"))
# (id, parts beside one valid instance, failure reasons of the bad parts)
STOW_BAD_PARTS = [
    ("text-part", [("text/plain", b"hello, not an instance")], [CANNOT_UNDERSTAND]),
    ("zip-part-as-dicom", [("application/dicom", ZIP_WITH_AN_INSTANCE)], [CANNOT_UNDERSTAND]),
    ("zip-part-as-zip", [("application/zip", ZIP_WITH_AN_INSTANCE)], [CANNOT_UNDERSTAND]),
    ("png-part", [("application/dicom", png_bytes(16))], [CANNOT_UNDERSTAND]),
    ("corrupt-deflate-part", [("application/dicom", b.corrupt_deflate())], [CANNOT_UNDERSTAND]),
    ("nested-part", [("application/dicom", b.nested_sequences(300))], [CANNOT_UNDERSTAND]),
    (
        "report-and-text",
        [("application/dicom", d.structured_report()), ("text/plain; charset=utf-8", b"x")],
        [NOT_SUPPORTED, CANNOT_UNDERSTAND],
    ),
]


@pytest.mark.parametrize("case, bad, reasons", STOW_BAD_PARTS, ids=[c[0] for c in STOW_BAD_PARTS])
def test_stow_stores_the_valid_instance_and_lists_each_bad_part(client, config, case, bad, reasons):
    valid = d.ct_bytes()
    response = stow(client, [*bad, ("application/dicom", valid)])
    assert response.status_code == 202, (case, response.get_data(as_text=True))
    assert stored_instances(response) == [str(d.ct_dataset().SOPInstanceUID)]
    assert failures(response) == reasons
    comments = [item["00000902"]["Value"][0] for item in response.get_json()["00081198"]["Value"]]
    assert all(comment.startswith("instance-") for comment in comments), comments
    assert len(stored_blobs(config)) == 1  # the ZIP is never stored as an instance
    assert job_rows(config) == 1


@pytest.mark.parametrize(
    "parts",
    [
        [("application/dicom", ZIP_WITH_AN_INSTANCE)],
        [("text/plain", b"hello")],
        [("application/dicom", b"")],
    ],
    ids=["zip-alone", "text-alone", "empty-part"],
)
def test_stow_of_only_bad_parts_is_409_and_stores_nothing(client, config, parts):
    response = stow(client, parts)
    assert response.status_code == 409
    assert failures(response) == [CANNOT_UNDERSTAND]
    assert_nothing_stored_and_a_normal_job_follows(client, config)


@pytest.mark.parametrize(
    "body, status",
    [
        (b"--XyZ\r\nContent-Type: application/dicom", 400),  # a part without a header block
        (b"no boundary anywhere", 400),
        (b"--XyZ--\r\n", 400),
        (b"--XyZ\r\n\r\n\r\n--XyZ--", 409),  # one empty, untyped part
    ],
    ids=["no-header-block", "no-boundary", "no-parts", "empty-untyped-part"],
)
def test_odd_multipart_bodies_are_4xx(client, config, body, status):
    response = client.post("/v1/dicomweb/studies", data=body, content_type=STOW_TYPE)
    assert response.status_code == status, response.get_data(as_text=True)
    assert_nothing_stored_and_a_normal_job_follows(client, config)


def test_a_stow_bomb_refuses_the_request_and_stores_nothing(client, config):
    response = stow(
        client, [("application/dicom", d.ct_bytes()), ("application/dicom", SIXTY_FOUR_MB_BOMB)]
    )
    assert response.status_code == 413
    assert "instance-2" in response.get_json()["detail"]
    assert_nothing_stored_and_a_normal_job_follows(client, config)


def test_stow_appending_to_a_job_counts_its_scans_against_the_limit(client, config):
    first = stow(client, [("application/dicom", b.tiny_many_frames(20))])
    assert first.status_code == 200
    job_id = first.headers["Location"].rsplit("/", 1)[1]
    before = stored_blobs(config)
    more = stow(client, [("application/dicom", b.tiny_many_frames(11))], f"?job={job_id}")
    assert more.status_code == 413
    assert "10 left" in more.get_json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}").get_json()["counts"]["total"] == 20
    assert stored_blobs(config) == before
    fits = stow(client, [("application/dicom", b.tiny_many_frames(10))], f"?job={job_id}")
    assert fits.status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").get_json()["counts"]["total"] == 30


def test_the_listener_maps_each_refusal_to_its_dicom_status():
    from core.errors import Conflict, Malformed, OverQuota, TooLarge, Unsupported

    assert [
        dicom_status(error("x"))
        for error in (TooLarge, OverQuota, Unsupported, Malformed, Conflict)
    ] == [0xA700, 0xA700, 0x0122, 0xC000, 0xC000]


def _pydicom_test_files() -> list[Path]:
    import pydicom

    base = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in base.rglob("*.dcm") if p.read_bytes()[128:132] == b"DICM")


def test_the_header_budget_refuses_no_part10_file_pydicom_ships():
    """Deflated, big endian, implicit VR, encapsulated, enhanced multi-frame, private
    sequences: what real writers produce stays within the budget."""
    from core.intake.dicom_budget import HeaderBudget, check_structure

    files = _pydicom_test_files()
    assert len(files) > 50
    for path in files:
        syntax, parsed = check_structure(path.read_bytes(), path.name, HeaderBudget())
        assert parsed[128:132] == b"DICM", path.name


def test_a_deflated_file_is_handed_on_inflated_behind_an_explicit_vr_meta():
    import io

    import pydicom

    from core.intake.dicom_budget import DEFLATED, HeaderBudget, check_structure

    syntax, parsed = check_structure(b.deflated_ct(), "deflated.dcm", HeaderBudget())
    assert syntax == DEFLATED
    dataset = pydicom.dcmread(io.BytesIO(parsed))
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (dataset.pixel_array == d.ct_dataset().pixel_array).all()


class _Association:
    class requestor:
        ae_title = "HOSTILE"


class _Event:
    """What the C-STORE handler reads from pynetdicom's event: the association (and its
    calling AE title) and the instance as sent."""

    def __init__(self, assoc: _Association, data: bytes) -> None:
        self.assoc, self._data = assoc, data

    def encoded_dataset(self) -> bytes:
        return self._data


def _receiver(settings, session_factory, send_wakeups):
    """The C-STORE handlers as the listener builds them, over the test's stores."""
    from dicomnet.listener import StoreReceiver, job_service

    return StoreReceiver(job_service(settings, session_factory, send_wakeups), owner="pacs")


@pytest.mark.parametrize(
    "data, status",
    [
        (SIXTY_FOUR_MB_BOMB, 0xA700),
        (b.tiny_many_frames(3_000_000), 0xA700),
        (b.corrupt_deflate(), 0xC000),
        (b.nested_sequences(300), 0xC000),
        (d.structured_report(), 0x0122),
    ],
    ids=["deflate-bomb", "frames", "corrupt-deflate", "nested", "report"],
)
def test_the_c_store_handler_refuses_hostile_instances_with_their_dicom_status(
    config, data, status
):
    from core.wakeups import WakeupSender
    from covidscan.settings import load_settings
    from db.session import make_engine, make_session_factory

    settings = load_settings(config)
    engine = make_engine(settings.database_url)
    send_wakeups = WakeupSender(settings.redis_url)
    try:
        receiver = _receiver(settings, make_session_factory(engine), send_wakeups)
        association = _Association()
        assert receiver.on_store(_Event(association, data)) == status
        assert stored_blobs(config) == [] and job_rows(config) == 0
        assert receiver.on_store(_Event(association, d.ct_bytes())) == 0x0000
        assert job_rows(config) == 1 and len(stored_blobs(config)) == 1
    finally:
        send_wakeups.close()
        engine.dispose()

"""The HTML routes and scan thumbnails, through the Flask test client against a real
Redis and database (no worker: jobs stay queued)."""

import io
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.thumbnails import THUMBNAIL_SIZE, ThumbnailError, make_thumbnail, placeholder_png
from tests.images import corrupt_png, ct_slice, encode, png_bytes

pytestmark = pytest.mark.integration


def submit(client, *items, name=None):
    data = {"files": [(io.BytesIO(d), n) for n, d in items], **({"name": name} if name else {})}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def scan_ids(client, job_id):
    rows = client.get(f"/v1/jobs/{job_id}/results").get_json()["results"]
    return {r["filename"]: r["scan_id"] for r in rows}


def image_of(response) -> Image.Image:
    return Image.open(io.BytesIO(response.data))


def test_a_thumbnail_is_a_small_jpeg_cached_beside_the_blob(client, app_config):
    job = submit(client, ("big.png", png_bytes(600, seed=3)))
    scan_id = scan_ids(client, job["id"])["big.png"]
    first = client.get(f"/v1/scans/{scan_id}/thumbnail")
    assert first.status_code == 200 and first.mimetype == "image/jpeg"
    assert image_of(first).size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    assert "max-age" in first.headers["Cache-Control"]
    cached = Path(app_config["BLOB_DIR"]) / job["id"] / "000000.thumb.jpg"
    assert cached.read_bytes() == first.data
    cached.write_bytes(encode(ct_slice(32, 9), "JPEG"))  # the cache, not the scan, answers now
    assert image_of(client.get(f"/v1/scans/{scan_id}/thumbnail")).size == (32, 32)


def test_a_scan_that_cannot_be_decoded_gets_the_placeholder(client):
    job = submit(client, ("good.png", png_bytes(64)), ("corrupt.png", corrupt_png()))
    response = client.get(f"/v1/scans/{scan_ids(client, job['id'])['corrupt.png']}/thumbnail")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == placeholder_png()


def test_a_scan_whose_bytes_are_gone_gets_the_placeholder(client, app_config):
    job = submit(client, ("gone.png", png_bytes(64)))
    (Path(app_config["BLOB_DIR"]) / job["id"] / "000000").unlink()
    response = client.get(f"/v1/scans/{scan_ids(client, job['id'])['gone.png']}/thumbnail")
    assert response.status_code == 200 and response.data == placeholder_png()


def test_an_unknown_scan_is_404_problem_json(client):
    response = client.get("/v1/scans/no-such-scan/thumbnail")
    assert response.status_code == 404 and response.mimetype == "application/problem+json"
    assert "no-such-scan" in response.get_json()["detail"]


@pytest.mark.parametrize(
    "image, mode",
    [
        (
            Image.fromarray(np.linspace(0, 65535, 200 * 300).reshape(200, 300).astype(np.uint16)),
            "L",
        ),
        (ct_slice(300, 1, "RGB").convert("RGBA"), "RGB"),
        (ct_slice(90, 2).convert("P"), "RGB"),
    ],
)
def test_thumbnails_of_16_bit_alpha_and_palette_slices(image, mode):
    thumbnail = Image.open(io.BytesIO(make_thumbnail(encode(image), 4096 * 4096)))
    assert thumbnail.mode == mode and max(thumbnail.size) <= THUMBNAIL_SIZE
    low, high = thumbnail.getextrema() if mode == "L" else thumbnail.getextrema()[0]
    assert high - low > 100  # 16-bit slices are scaled to 8 bits, not clipped to white


def test_garbage_is_a_thumbnail_error():
    with pytest.raises(ThumbnailError):
        make_thumbnail(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 4096 * 4096)


def test_the_upload_page_shows_the_limits_and_the_notice(client):
    response = client.get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "Research use only, not for clinical diagnosis" in page
    assert 'data-max-upload-bytes="536870912"' in page
    assert 'for="files"' in page and 'for="job-name"' in page
    assert "/static/upload.js" in page and "http" not in page.split("<body>")[1]  # no CDN


def test_the_jobs_page_lists_jobs_newest_first_and_escapes_names(client):
    submit(client, ("a.png", png_bytes(16)), name="the older job")
    submit(client, ("b.png", png_bytes(16)), name="<script>alert(1)</script>")
    page = client.get("/jobs").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert page.index("&lt;script&gt;alert(1)&lt;/script&gt;") < page.index("the older job")


def test_the_job_page_carries_the_job_for_its_script(client):
    job = submit(client, ("a.png", png_bytes(16)), ("b.png", png_bytes(16, seed=1)), name="ward 3")
    response = client.get(f"/jobs/{job['id']}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    embedded = json.loads(unescape(re.search(r'data-job="([^"]*)"', page).group(1)))
    assert embedded["id"] == job["id"] and embedded["counts"]["total"] == 2
    assert f'href="/v1/jobs/{job["id"]}/results?format=csv"' in page
    assert "These numbers mean nothing: no trained model is loaded." in page


def test_an_unknown_job_page_is_a_404_page(client):
    response = client.get("/jobs/nope")
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "No such job" in response.get_data(as_text=True)


@pytest.mark.parametrize("asset", ["style.css", "common.js", "upload.js", "job.js"])
def test_static_assets_are_shipped(client, asset):
    response = client.get(f"/static/{asset}")
    assert response.status_code == 200 and len(response.data) > 500
    assert b"://" not in response.data  # nothing fetched from elsewhere


def test_a_dicom_slice_has_a_thumbnail_of_each_frame_in_the_lung_window(client, app_config):
    """As the model sees it: windowed (width 1500, level -600), each frame its own."""
    from covidscan.dicom_pixels import LUNG_WINDOW, grey_slice
    from tests import dicom_files as d

    single, multi = d.ct_bytes(), d.multiframe_ct(frames=3, spacing=5.0)
    job = submit(client, ("ct.dcm", single), ("multi.dcm", multi))
    rows = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    thumbnails = {}
    for row in rows:
        response = client.get(f"/v1/scans/{row['scan_id']}/thumbnail")
        assert response.status_code == 200 and response.mimetype == "image/jpeg", row
        thumbnails[(row["filename"], row["slice_position"])] = image_of(response)
    assert len(thumbnails) == 4
    expected = Image.fromarray(grey_slice(single, 0, LUNG_WINDOW))
    expected.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    [shown] = [image for (name, _), image in thumbnails.items() if name == "ct.dcm"]
    assert shown.size == expected.size
    difference = np.abs(np.asarray(shown.convert("L"), float) - np.asarray(expected, float))
    assert difference.mean() < 3  # JPEG's loss, not another window or frame
    frames = [
        np.asarray(image.convert("L"), float)
        for (name, _), image in sorted(thumbnails.items())
        if name == "multi.dcm"
    ]
    assert len(frames) == 3 and not np.array_equal(frames[0], frames[2])
    cached = sorted(
        p.name
        for p in (Path(app_config["BLOB_DIR"]) / job["id"]).iterdir()
        if p.name.endswith(".thumb.jpg")
    )
    assert len(cached) == 4 and sum(".f" in name for name in cached) == 3


def test_every_page_carries_the_states_its_scripts_compare_with(client):
    from covidscan.contract import ExportState, JobStatus, ScanStatus

    page = client.get("/").get_data(as_text=True)
    carried = re.search(r'<html lang="en" data-contract="([^"]*)"', page).group(1)
    contract = json.loads(unescape(carried))
    assert contract["ScanStatus"] == {s.name: s.value for s in ScanStatus}
    assert contract["ExportState"] == {s.name: s.value for s in ExportState}
    assert contract["JobStatus"]["CANCELLING"] == "cancelling"
    assert contract["finishedJobStatuses"] == list(JobStatus.finished())


SCRIPTS = sorted((Path(__file__).parents[1] / "api" / "static").glob("*.js"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_no_script_spells_a_status_of_its_own(script):
    from covidscan.contract import ExportState, JobStatus, ScanStatus

    enums = (JobStatus, ScanStatus) + ((ExportState,) if script.name == "exports.js" else ())
    words = {s.value for enum in enums for s in enum}
    quoted = re.findall(r"""["']([a-z_]+)["']""", script.read_text())
    assert not words & set(quoted), f"{script.name} spells {sorted(words & set(quoted))}"

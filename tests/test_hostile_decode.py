"""Decoding in the worker: OpenCV's own pixel cap, every OpenCV error a per-scan failure,
peak memory for the largest allowed slice, and hostile scans through a real worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zlib

import pytest

from models.preprocess import ImageDecodeError, load_seed_v1
from tests import hostile_files as h
from tests.conftest import ROOT, wait_for_job
from tests.images import corrupt_png, ct_slice, encode, png_bytes


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (cv2 not yet imported); it prints one JSON line."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "data, words",
    [
        (h.png_header_only(64, 64), "truncated or corrupt"),
        (h.png_header_only(64, 64, idat=b"\x78\x9c" + b"\xff" * 40), "could not decode"),
        (h.png_signature_then_html(), "could not decode"),
        (corrupt_png(), "truncated or corrupt"),
        (b"", "empty"),
    ],
)
def test_undecodable_scans_fail_with_a_reason(data, words):
    with pytest.raises(ImageDecodeError, match=words):
        load_seed_v1(data)


def test_an_animated_png_decodes_to_its_first_frame():
    first = encode(ct_slice(32, seed=7))
    assert (load_seed_v1(h.apng()) == load_seed_v1(first)).all()


def test_opencv_refuses_a_slice_over_the_cap_before_allocating_it():
    """The worker's own cap, for bytes that reached the blob store some other way."""
    out = _run(
        "import json\n"
        "from models.preprocess import configure_decoding, load_seed_v1, ImageDecodeError\n"
        "from tests.hostile_files import png_header_only\n"
        "configure_decoding(4096 * 4096)\n"
        "try:\n"
        "    load_seed_v1(png_header_only(5000, 5000)); print(json.dumps({'error': None}))\n"
        "except ImageDecodeError as exc:\n"
        "    print(json.dumps({'error': str(exc)}))\n"
    )
    assert "larger than the limit of 16777216 pixels" in out["error"]


def test_configuring_the_cap_after_opencv_was_imported_is_an_error():
    out = _run(
        "import json, cv2\n"
        "from models.preprocess import configure_decoding\n"
        "try:\n"
        "    configure_decoding(1000); print(json.dumps({'error': None}))\n"
        "except RuntimeError as exc:\n"
        "    print(json.dumps({'error': str(exc)}))\n"
    )
    assert "imported before" in out["error"]


def _largest_png(side: int = 4096) -> bytes:
    """The largest slice MAX_SCAN_PIXELS allows, in its widest form: 16-bit RGBA, 8 bytes each."""
    compressor = zlib.compressobj(1)
    row = b"\0" + bytes(range(256)) * (side * 8 // 256)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return h.png_header_only(side, side, depth=16, colour=6, idat=body)


def test_peak_memory_decoding_the_largest_allowed_slice_stays_under_1_gb(tmp_path):
    path = tmp_path / "largest.png"
    path.write_bytes(_largest_png())
    out = _run(
        "import json\n"
        "from models.preprocess import configure_decoding, load_seed_v1\n"
        # VmHWM: this process's own peak resident memory (getrusage's ru_maxrss would carry
        # the forking test process's peak across exec).
        "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
        ".split()[1])\n"
        "configure_decoding(4096 * 4096)\n"
        "import numpy\n"
        "before = hwm()\n"
        f"tensor = load_seed_v1(open({str(path)!r}, 'rb').read())\n"
        "peak = hwm()\n"
        "print(json.dumps({'before_kb': before, 'peak_kb': peak, 'shape': tensor.shape}))\n"
    )
    print(
        f"peak RSS decoding a 4096x4096 16-bit RGBA PNG: {out['peak_kb'] / 1024:.0f} MiB "
        f"(process before decoding: {out['before_kb'] / 1024:.0f} MiB)"
    )
    assert out["shape"] == [224, 224, 3]
    assert out["peak_kb"] < 1024 * 1024


@pytest.mark.integration
def test_hostile_scans_fail_alone_in_the_real_worker_and_a_normal_job_follows(
    stack_config, stack_key, worker
):
    from api import create_app
    from tests.conftest import authorised

    # An API whose pixel cap is above the worker's: the worker must refuse on its own.
    client = authorised(
        create_app({**stack_config, "MAX_SCAN_PIXELS": "5000x5000"}).test_client(), stack_key
    )
    first_frame = encode(ct_slice(32, seed=7))
    items = [
        ("anim.png", h.apng()),
        ("first.png", first_frame),
        ("poly.png", h.polyglot_png_zip()),
        ("poly.jpg", h.polyglot_jpeg_html()),
        ("over-worker-cap.png", h.png_header_only(5000, 5000)),
        ("no-pixels.png", h.png_header_only(64, 64)),
        ("corrupt.png", corrupt_png()),
    ]
    data = {"files": [(io.BytesIO(d), n) for n, d in items]}
    response = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    job = wait_for_job(client, response.get_json()["id"])
    rows = {
        r["filename"]: r for r in client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"]
    }
    for name in ("anim.png", "first.png", "poly.png", "poly.jpg"):
        assert rows[name]["status"] == "succeeded", rows[name]
    assert rows["anim.png"]["probability_covid"] == rows["first.png"]["probability_covid"]
    assert "larger than the limit" in rows["over-worker-cap.png"]["error"]
    for name in ("no-pixels.png", "corrupt.png"):
        assert rows[name]["status"] == "failed" and rows[name]["error"], rows[name]
    normal = [(f"n{i}.png", png_bytes(48, seed=300 + i)) for i in range(3)]
    response = client.post(
        "/v1/jobs",
        data={"files": [(io.BytesIO(d), n) for n, d in normal]},
        content_type="multipart/form-data",
    )
    after = wait_for_job(client, response.get_json()["id"])
    assert after["status"] == "succeeded" and after["counts"]["succeeded"] == 3

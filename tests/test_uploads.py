import io

import pytest

from api.problems import status_of
from core.errors import Malformed, TooLarge, Unsupported
from core.intake import ParsedUpload, UploadLimits, iter_scans, sniff
from tests.images import ct_slice, encode, png_bytes, zip_bytes

LIMITS = UploadLimits(max_scan_bytes=1024 * 1024, max_scans=100)


def parse(parts, limits=LIMITS):
    parsed = ParsedUpload()
    scans = list(iter_scans([(n, io.BytesIO(d)) for n, d in parts], limits, parsed))
    return scans, parsed


def test_sniffing_goes_by_content_not_name():
    assert sniff(png_bytes(16)) == "image/png"
    assert sniff(encode(ct_slice(16), "JPEG")) == "image/jpeg"
    assert sniff(zip_bytes([("a.png", png_bytes(16))])) == "application/zip"
    assert sniff(b"GIF89a" + b"\0" * 20) is None
    assert sniff(b"hello, not an image") is None


def test_zip_entries_become_scans_named_by_their_path_and_others_are_reported():
    archive = zip_bytes(
        [
            ("ct/a.png", png_bytes(16)),
            ("ct/notes.txt", b"hello"),
            ("ct/b.jpg", encode(ct_slice(16), "JPEG")),
            ("inner.zip", zip_bytes([("x.png", png_bytes(8))])),
        ]
    )
    scans, parsed = parse([("first.png", png_bytes(16, seed=1)), ("batch.zip", archive)])
    assert [s.filename for s in scans] == ["first.png", "ct/a.png", "ct/b.jpg"]
    assert {s.filename: s.reason for s in parsed.skipped} == {
        "batch.zip/ct/notes.txt": "not a PNG, JPEG or DICOM image",
        "batch.zip/inner.zip": "nested ZIP archives are not expanded",
    }


def test_a_file_that_is_no_image_is_415_naming_it():
    with pytest.raises(Unsupported) as info:
        parse([("ok.png", png_bytes(16)), ("report.png", b"%PDF-1.4 not a png")])
    assert status_of(info.value) == 415
    assert "report.png" in info.value.detail


def test_a_scan_over_the_size_limit_is_413():
    with pytest.raises(TooLarge) as info:
        parse([("big.png", png_bytes(256))], UploadLimits(max_scan_bytes=1000, max_scans=10))
    assert status_of(info.value) == 413 and "big.png" in info.value.detail


def test_too_many_scans_is_413():
    archive = zip_bytes([(f"{i}.png", png_bytes(8, seed=i)) for i in range(4)])
    with pytest.raises(TooLarge) as info:
        parse([("a.zip", archive)], UploadLimits(max_scan_bytes=10**6, max_scans=3))
    assert status_of(info.value) == 413 and "MAX_SCANS_PER_JOB" in info.value.detail


def test_a_broken_zip_is_400_naming_it():
    with pytest.raises(Malformed) as info:
        parse([("broken.zip", b"PK\x03\x04" + b"\0" * 40)])
    assert status_of(info.value) == 400 and "broken.zip" in info.value.detail

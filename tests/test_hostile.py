"""Hostile uploads and requests, through the Flask test client with a real Redis and database.

Each is refused with a 4xx problem+json naming the problem, and leaves nothing behind:
no job, no bytes in the blob store, no file anywhere else under the test's directory.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from tests import hostile_files as h
from tests.conftest import ROOT, keyed_test_clients
from tests.images import png_bytes

# Through the real database: SQLite, and PostgreSQL in CI (which refuses NUL characters).
pytestmark = pytest.mark.database

LIMITS = {
    "MAX_UPLOAD_BYTES": str(6 * 1024 * 1024),
    "MAX_SCAN_BYTES": str(2 * 1024 * 1024),
    "MAX_EXPANDED_BYTES": str(3 * 1024 * 1024),
    "MAX_ARCHIVE_ENTRIES": "20",
    "MAX_SCANS_PER_JOB": "30",
}
MB = 1024 * 1024


def _noise(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes, so archives of them pass the compression-ratio check."""
    return (seed.to_bytes(2, "big") * 8 + os.urandom(size))[:size]


def _multipart(
    parts: list[tuple[str, bytes, bytes]],
    fields: dict[str, str] | None = None,
    boundary: bytes = b"hostileBoundary7",
) -> tuple[bytes, str]:
    """A raw multipart body: (field name, file name as raw bytes, content) per part."""
    body = b""
    for field, name, data in parts:
        body += (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="'
            + field.encode()
            + b'"; filename="'
            + name
            + b'"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        )
    for key, value in (fields or {}).items():
        body += (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="'
            + key.encode()
            + b'"\r\n\r\n'
            + value.encode()
            + b"\r\n"
        )
    return body + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"


def files(*items: tuple[str, bytes], **fields: str):
    return lambda: _multipart([("files", n.encode(), d) for n, d in items], fields)


def raw_names(*items: tuple[bytes, bytes]):
    return lambda: _multipart([("files", n, d) for n, d in items])


def raw(body: bytes, content_type: str):
    return lambda: (body, content_type)


PNG = png_bytes(32)
# (id, request builder, expected status, words the detail must contain)
REFUSED = [
    # Pixel bombs in PNG headers
    (
        "png-30000-square",
        files(("bomb.png", h.png_header_only(30000, 30000))),
        413,
        ["bomb.png", "30000×30000", "MAX_SCAN_PIXELS"],
    ),
    ("png-65535-square", files(("max.png", h.png_header_only(65535, 65535))), 413, ["max.png"]),
    ("png-one-over-cap", files(("over.png", h.png_header_only(4097, 4096))), 413, ["4097×4096"]),
    ("png-wide-strip", files(("strip.png", h.png_header_only(2**24, 2))), 413, ["strip.png"]),
    (
        "png-16bit-rgba",
        files(("deep.png", h.png_header_only(20000, 20000, 16, 6))),
        413,
        ["deep.png"],
    ),
    ("png-zero-width", files(("zero.png", h.png_header_only(0, 100))), 400, ["zero.png"]),
    ("png-width-2^31", files(("huge.png", h.png_header_only(2**31, 10))), None, ["huge.png"]),
    (
        "png-bad-ihdr-crc",
        files(("crc.png", h.png_header_only(64, 64, ihdr_crc=0))),
        400,
        ["crc.png"],
    ),
    ("png-bad-depth", files(("depth.png", h.png_header_only(64, 64, depth=7))), 400, ["depth.png"]),
    (
        "png-truncated-ihdr",
        files(("cut.png", h.PNG_SIGNATURE + b"\0\0\0\x0dIHDR\0\0")),
        400,
        ["cut.png"],
    ),
    ("apng-bomb", files(("anim.png", h.apng_bomb())), 413, ["anim.png", "30000×30000"]),
    (
        "bomb-after-good",
        files(("ok.png", PNG), ("late.png", h.png_header_only(9000, 9000))),
        413,
        ["late.png"],
    ),
    # Pixel bombs in JPEG headers
    (
        "jpeg-65535-square",
        files(("bomb.jpg", h.jpeg_header_only(65535, 65535))),
        413,
        ["bomb.jpg", "65535×65535"],
    ),
    (
        "jpeg-progressive",
        files(("prog.jpg", h.jpeg_header_only(50000, 50000, 0xC2))),
        413,
        ["prog.jpg"],
    ),
    ("jpeg-one-over-cap", files(("over.jpg", h.jpeg_header_only(4096, 4097))), 413, ["4096×4097"]),
    (
        "jpeg-grey-bomb",
        files(("grey.jpg", h.jpeg_header_only(60000, 60000, components=1))),
        413,
        ["grey.jpg"],
    ),
    (
        "jpeg-no-sof",
        files(("nosof.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 40)),
        400,
        ["nosof.jpg"],
    ),
    ("jpeg-zero-height", files(("flat.jpg", h.jpeg_header_only(100, 0))), 400, ["flat.jpg"]),
    (
        "jpeg-bomb-in-zip",
        files(("set.zip", h.zip_of([("x/b.jpg", h.jpeg_header_only(40000, 900))]))),
        413,
        ["set.zip", "b.jpg"],
    ),
    (
        "png-bomb-in-zip",
        files(("set.zip", h.zip_of([("a.png", PNG), ("b.png", h.png_header_only(8000, 8000))]))),
        413,
        ["b.png", "8000×8000"],
    ),
    # ZIP tricks
    (
        "zip-overlap-same-offset",
        files(("o.zip", h.zip_overlapping_same_offset())),
        400,
        ["o.zip", "overlap"],
    ),
    ("zip-overlap-inside", files(("o.zip", h.zip_overlapping_inside())), 400, ["overlap"]),
    (
        "zip-too-many-entries",
        files(("many.zip", h.zip_of([(f"{i}.png", PNG) for i in range(21)]))),
        413,
        ["many.zip", "21 entries", "MAX_ARCHIVE_ENTRIES"],
    ),
    (
        "zip-skipped-entries-count",
        files(("notes.zip", h.zip_of([(f"{i}.txt", b"x") for i in range(25)]))),
        413,
        ["MAX_ARCHIVE_ENTRIES"],
    ),
    (
        "zip-directories-count",
        files(("dirs.zip", h.zip_of([(f"d{i}/", b"") for i in range(30)]))),
        413,
        ["MAX_ARCHIVE_ENTRIES"],
    ),
    (
        "zip-ratio-bomb",
        files(("pad.zip", h.zip_ratio_bomb())),
        413,
        ["padded.png", "MAX_COMPRESSION_RATIO"],
    ),
    (
        "zip-ratio-skipped-entry",
        files(("z.zip", h.zip_of([("zeros.txt", b"\0" * MB)]))),
        413,
        ["zeros.txt", "MAX_COMPRESSION_RATIO"],
    ),
    (
        "zip-declared-over-scan-limit",
        files(("d.zip", h.zip_declared_size(3 * MB))),
        413,
        ["big.png"],
    ),
    ("zip-declared-4gb", files(("d.zip", h.zip_declared_size(0xFFFFFFFE))), 413, ["big.png"]),
    (
        "zip-expansion-over-budget",
        files(
            (
                "e.zip",
                h.zip_of([(f"{i}.png", PNG + _noise(MB, i)) for i in range(4)], zipfile.ZIP_STORED),
            )
        ),
        413,
        ["MAX_EXPANDED_BYTES"],
    ),
    (
        "zip-skipped-count-in-budget",
        files(
            ("t.zip", h.zip_of([(f"{i}.bin", _noise(MB, i)) for i in range(4)], zipfile.ZIP_STORED))
        ),
        413,
        ["MAX_EXPANDED_BYTES"],
    ),
    (
        "parts-over-budget",
        files(*[(f"{i}.png", PNG + _noise(MB, i)) for i in range(4)]),
        413,
        ["MAX_EXPANDED_BYTES"],
    ),
    ("zip-bad-utf8-name", files(("u.zip", h.zip_bad_utf8_name())), 400, ["u.zip", "UTF-8"]),
    ("zip-nul-name", files(("n.zip", h.zip_nul_name())), 400, ["NUL"]),
    ("zip-long-name", files(("l.zip", h.zip_long_name())), 400, ["1024"]),
    ("zip-lying-size", files(("liar.zip", h.zip_lying_small_size())), 400, ["liar.png"]),
    ("zip-bad-crc", files(("crc.zip", h.zip_bad_crc())), 400, ["crc.png"]),
    ("zip-unknown-method", files(("m.zip", h.zip_method(97))), 400, ["m.png"]),
    ("zip-local-name-differs", files(("ln.zip", h.zip_local_name_differs())), 400, ["ln.zip"]),
    ("zip-offset-out-of-range", files(("far.zip", h.zip_offset_out_of_range())), 400, ["far"]),
    (
        "zip-offset-at-garbage",
        files(("g.zip", h.zip_directory_offset_points_at_garbage())),
        400,
        ["g.zip"],
    ),
    ("zip-truncated", files(("cut.zip", h.zip_of([("a.png", PNG)])[:-30])), 400, ["cut.zip"]),
    ("zip-empty", files(("empty.zip", h.zip_of([]))), 400, ["no PNG, JPEG or DICOM"]),
    (
        "zip-nested-only",
        files(("outer.zip", h.zip_of([("inner.zip", h.zip_of([("a.png", PNG)]))]))),
        400,
        ["no PNG, JPEG or DICOM"],
    ),
    (
        "zip-encrypted-only",
        files(("enc.zip", h.zip_encrypted_only())),
        400,
        ["no PNG, JPEG or DICOM"],
    ),
    (
        "zip-html-named-png",
        files(("x.zip", h.zip_of([("evil.png", h.html_as_png())]))),
        400,
        ["no PNG, JPEG or DICOM"],
    ),
    # Polyglots and other formats
    ("html-named-png", files(("evil.png", h.html_as_png())), 415, ["evil.png"]),
    ("png-signature-then-html", files(("sig.png", h.png_signature_then_html())), 400, ["sig.png"]),
    ("gif", files(("a.png", h.other_format("GIF"))), 415, ["a.png"]),
    ("bmp", files(("a.png", h.other_format("BMP"))), 415, ["a.png"]),
    ("tiff", files(("a.png", h.other_format("TIFF"))), 415, ["a.png"]),
    ("webp", files(("a.jpg", h.other_format("WEBP"))), 415, ["a.jpg"]),
    ("pdf", files(("scan.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")), 415, ["scan.png"]),
    ("empty-file", files(("nothing.png", b"")), 415, ["nothing.png", "empty"]),
    # Bad names
    ("name-nul", raw_names((b"a\x00b.png", PNG)), 400, ["NUL"]),
    ("name-invalid-utf8", raw_names((b"\xff\xfe.png", PNG)), 400, []),
    ("name-over-1024-bytes", raw_names((b"n" * 1100 + b".png", PNG)), 400, ["1024"]),
    ("name-1024-multibyte", raw_names((("é" * 600 + ".png").encode(), PNG)), 400, ["1024"]),
    # Bad form fields and bodies
    ("name-field-too-long", files(("a.png", PNG), name="j" * 201), 400, ["name"]),
    ("precision-unknown", files(("a.png", PNG), precision="fp64"), 400, ["precision"]),
    ("model-unknown", files(("a.png", PNG), model="nope:1"), None, ["nope"]),
    ("model-malformed", files(("a.png", PNG), model="../../etc/passwd"), None, []),
    ("files-as-text-field", raw(*_multipart([], {"files": "not a file"})), 400, ["no files"]),
    ("no-body", raw(b"", "multipart/form-data; boundary=x"), 400, []),
    ("json-body", raw(b'{"files": []}', "application/json"), 415, ["multipart/form-data"]),
    (
        "broken-boundary",
        raw(
            b'--other\r\nContent-Disposition: form-data; name="files"; '
            b'filename="a.png"\r\n\r\n' + PNG,
            "multipart/form-data; boundary=x",
        ),
        400,
        [],
    ),
    ("name-field-nul", files(("a.png", PNG), name="ward\x003"), 400, ["NUL"]),
    ("model-field-nul", files(("a.png", PNG), model="tiny\x00:1"), 400, ["NUL"]),
    ("form-field-over-memory-limit", files(("a.png", PNG), name="x" * (MB + 10)), 413, []),
    # Oversize
    (
        "request-over-upload-limit",
        files(("big.png", PNG + _noise(7 * MB))),
        413,
        ["MAX_UPLOAD_BYTES"],
    ),
    (
        "scan-over-scan-limit",
        files(("big.png", PNG + _noise(MB * 2 + 10))),
        413,
        ["big.png", "MAX_SCAN_BYTES"],
    ),
    (
        "too-many-scans",
        files(
            ("s.zip", h.zip_of([(f"{i}.png", PNG) for i in range(16)])),
            ("t.zip", h.zip_of([(f"{i}.png", PNG) for i in range(16)])),
        ),
        413,
        ["MAX_SCANS_PER_JOB"],
    ),
]


def _tree(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_file() and not p.name.endswith(("-journal", "-wal", "-shm"))
    }


@pytest.fixture
def hostile_app(app_config, api_key, tmp_path):
    from api import create_app

    return keyed_test_clients(create_app({**app_config, **LIMITS}), api_key)


@pytest.mark.parametrize("case, build, status, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_hostile_upload_is_refused_with_a_problem_and_leaves_nothing(
    hostile_app, tmp_path, case, build, status, words
):
    client = hostile_app.test_client()
    body, content_type = build()
    before, repo_before = _tree(tmp_path), set(os.listdir(ROOT))
    response = client.post("/v1/jobs", data=body, content_type=content_type)
    problem = response.get_json(silent=True) or {}
    assert 400 <= response.status_code < 500, (case, response.status_code, problem)
    if status is not None:
        assert response.status_code == status, (case, problem)
    assert response.mimetype == "application/problem+json", case
    assert problem["status"] == response.status_code and problem["detail"]
    for word in words:
        assert word in problem["detail"], (case, problem["detail"])
    blobs = Path(hostile_app.extensions["covidscan"].settings.blob_dir)
    assert _tree(blobs) == set(), f"{case} left bytes in the blob store"
    assert _tree(tmp_path) == before, f"{case} wrote files"
    assert set(os.listdir(ROOT)) == repo_before
    assert client.get("/v1/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/x/results?format=xml",
        "/v1/jobs?limit=abc",
        "/v1/jobs?limit=100000",
        "/v1/jobs/x/results?cursor=-5",
        "/v1/scans/%00/thumbnail",
        "/v1/jobs/%00",
        "/v1/jobs?limit=1%00",
        "/v1/jobs/x/results?format=csv%00",
        "/v1/jobs/" + "a" * 5000,
    ],
)
def test_hostile_query_strings_and_paths_are_4xx(hostile_app, path):
    response = hostile_app.test_client().get(path)
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/problem+json"


def test_a_foreign_host_header_is_refused(hostile_app):
    response = hostile_app.test_client().get("/v1/jobs", headers={"Host": "evil.example"})
    assert response.status_code == 400 and "evil.example" in response.get_json()["detail"]


def test_every_response_carries_the_security_headers(hostile_app):
    for path in ("/", "/v1/jobs", "/nowhere"):
        headers = hostile_app.test_client().get(path).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"


def test_templates_hold_no_inline_script_or_style():
    for template in (ROOT / "api" / "templates").glob("*.html"):
        text = template.read_text()
        assert "<style" not in text and " style=" not in text, template.name
        for tag in text.split("<script")[1:]:
            assert tag.split(">", 1)[0].strip().startswith("src="), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name  # no onclick= and friends


def test_accepted_oddities_are_stored_as_scans(hostile_app):
    """Valid images with unusual shapes are accepted; the worker tests decode them."""
    client = hostile_app.test_client()
    body, content_type = files(
        ("anim.png", h.apng()),
        ("poly.png", h.polyglot_png_zip()),
        ("poly.jpg", h.polyglot_jpeg_html()),
        ("edge.png", h.png_header_only(4096, 4096)),
    )()
    response = client.post("/v1/jobs", data=body, content_type=content_type)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["counts"]["total"] == 4


def test_csv_cells_that_start_a_formula_are_neutralised():
    from api.serialize import spreadsheet_safe

    for text in ('=HYPERLINK("http://evil")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_safe(text) == "'" + text
    assert spreadsheet_safe("slice_001.png") == "slice_001.png"
    assert spreadsheet_safe(0.25) == 0.25


def test_a_formula_file_name_comes_back_quoted_in_the_csv(hostile_app):
    client = hostile_app.test_client()
    name = '=HYPERLINK("http://evil.example","x").png'
    body, content_type = files((name, PNG))()
    job = client.post("/v1/jobs", data=body, content_type=content_type).get_json()
    text = client.get(f"/v1/jobs/{job['id']}/results?format=csv").get_data(as_text=True)
    row = text.splitlines()[1]
    assert "'=HYPERLINK" in row and ',"=HYPERLINK' not in row and ",=HYPERLINK" not in row


def test_thumbnails_obey_the_pixel_cap_and_cache_the_failure(hostile_app, app_config, api_key):
    from api import create_app

    client = hostile_app.test_client()
    body, content_type = files(("edge.png", h.png_header_only(4000, 4000)))()
    job = client.post("/v1/jobs", data=body, content_type=content_type).get_json()
    scan_id = client.get(f"/v1/jobs/{job['id']}/results").get_json()["results"][0]["scan_id"]
    # An API with a lower cap (a setting changed after upload) refuses to decode it.
    low = keyed_test_clients(
        create_app({**app_config, **LIMITS, "MAX_SCAN_PIXELS": "1000x1000"}), api_key
    ).test_client()
    first = low.get(f"/v1/scans/{scan_id}/thumbnail")
    assert first.status_code == 200 and first.mimetype == "image/png"  # the placeholder
    blobs = Path(app_config["BLOB_DIR"])
    (failed,) = blobs.rglob("*.thumb.failed")
    assert "MAX_SCAN_PIXELS" in failed.read_text()
    assert low.get(f"/v1/scans/{scan_id}/thumbnail").mimetype == "image/png"
    assert not list(blobs.rglob("*.thumb.jpg"))

"""Crafted hostile files: bombs built from headers (no real pixels), ZIP tricks, polyglots.

Every builder returns bytes in memory and costs milliseconds; none allocates the pixels
its header declares.
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from typing import Optional

from PIL import Image

from tests.images import ct_slice, encode, png_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes, crc: Optional[int] = None) -> bytes:
    checksum = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def png_header_only(
    width: int,
    height: int,
    depth: int = 8,
    colour: int = 0,
    idat: bytes = b"",
    extra: bytes = b"",
    ihdr_crc: Optional[int] = None,
) -> bytes:
    """A PNG declaring ``width``×``height`` whose IDAT holds a few compressed zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr, ihdr_crc)
        + extra
        + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 256))
        + png_chunk(b"IEND", b"")
    )


def zlib_bomb_png(width: int = 4000, height: int = 4000) -> bytes:
    """An in-limit PNG whose IDAT inflates to its full (zero) pixel rows."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_header_only(width, height, idat=body)


def apng(frames: int = 3, size: int = 32) -> bytes:
    """An animated PNG: the first frame is a CT-like slice, the others are blank."""
    images = [ct_slice(size, seed=7)] + [Image.new("L", (size, size), 255)] * (frames - 1)
    buffer = io.BytesIO()
    images[0].save(buffer, "PNG", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def apng_bomb(width: int = 30000, height: int = 30000) -> bytes:
    actl = png_chunk(b"acTL", struct.pack(">II", 2, 0))
    return png_header_only(width, height, extra=actl)


def jpeg_header_only(width: int, height: int, sof: int = 0xC0, components: int = 3) -> bytes:
    """A JPEG whose SOF declares ``width``×``height``; the scan data is a few bytes."""
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    sof_body = struct.pack(">BHHB", 8, height, width, components) + comps
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes(range(1, 65))
    sof_segment = bytes([0xFF, sof]) + struct.pack(">H", len(sof_body) + 2) + sof_body
    dht = (
        b"\xff\xc4"
        + struct.pack(">H", 31)
        + b"\x00"
        + bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
        + bytes(range(12))
    )
    sos_body = struct.pack(">B", components) + b"".join(
        bytes([i + 1, 0]) for i in range(components)
    )
    sos = b"\xff\xda" + struct.pack(">H", len(sos_body) + 5) + sos_body + b"\x00\x3f\x00"
    return (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + dqt
        + sof_segment
        + dht
        + sos
        + b"\x00" * 64
        + b"\xff\xd9"
    )


def zip_of(entries: Iterable[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _patch_central(data: bytes, index: int, offset_in_entry: int, value: bytes) -> bytes:
    """Overwrite bytes inside the ``index``-th central directory record."""
    position = -1
    for _ in range(index + 1):
        position = data.index(b"PK\x01\x02", position + 1)
    start = position + offset_in_entry
    return data[:start] + value + data[start + len(value) :]


def _patch_local(data: bytes, index: int, offset_in_entry: int, value: bytes) -> bytes:
    position = -1
    for _ in range(index + 1):
        position = data.index(b"PK\x03\x04", position + 1)
    start = position + offset_in_entry
    return data[:start] + value + data[start + len(value) :]


def zip_overlapping_same_offset() -> bytes:
    """Two directory entries pointing at the same local entry (one payload, counted twice)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive = zip_of(
            [("a.png", png_bytes(32, seed=1)), ("a.png", png_bytes(32, seed=1))], zipfile.ZIP_STORED
        )
    return _patch_central(archive, 1, 42, struct.pack("<I", 0))


def zip_overlapping_inside() -> bytes:
    """The second entry's local header lies inside the first entry's data."""
    first = png_bytes(64, seed=1)
    inner = zip_of([("c.png", png_bytes(16, seed=3))], zipfile.ZIP_STORED)
    local_b = inner[: inner.index(b"PK\x01\x02")]
    payload = first + local_b  # c's local entry is embedded at the end of a.png's data
    archive = zip_of([("a.png", payload), ("c.png", png_bytes(16, seed=3))], zipfile.ZIP_STORED)
    offset_b = archive.index(local_b)
    return _patch_central(archive, 1, 42, struct.pack("<I", offset_b))


def zip_bad_utf8_name() -> bytes:
    archive = zip_of([("xx.png", png_bytes(16))])
    archive = _patch_central(archive, 0, 8, struct.pack("<H", 0x800))
    archive = _patch_central(archive, 0, 46, b"\xff\xfe")
    return archive


def zip_nul_name() -> bytes:
    archive = zip_of([("a_b.png", png_bytes(16))])
    archive = _patch_local(archive, 0, 31, b"\x00")
    return _patch_central(archive, 0, 47, b"\x00")


def zip_ratio_bomb(size: int = 8 * 1024 * 1024) -> bytes:
    """A PNG padded with megabytes of zeros: compresses about 1000 times."""
    return zip_of([("padded.png", png_bytes(16) + b"\0" * size)])


def zip_declared_size(entry_size: int) -> bytes:
    """A stored entry whose directory claims ``entry_size`` bytes (and a matching local header)."""
    archive = zip_of([("big.png", png_bytes(16))], zipfile.ZIP_STORED)
    value = struct.pack("<I", min(entry_size, 0xFFFFFFFF))
    archive = _patch_central(archive, 0, 24, value)
    return _patch_local(archive, 0, 22, value)


def zip_lying_small_size() -> bytes:
    """The directory says 10 bytes; the data is a whole PNG."""
    archive = zip_of([("liar.png", png_bytes(64))], zipfile.ZIP_STORED)
    archive = _patch_central(archive, 0, 24, struct.pack("<I", 10))
    return _patch_local(archive, 0, 22, struct.pack("<I", 10))


def zip_bad_crc() -> bytes:
    archive = zip_of([("crc.png", png_bytes(64))])
    archive = _patch_central(archive, 0, 16, b"\0\0\0\0")
    return _patch_local(archive, 0, 14, b"\0\0\0\0")


def zip_method(method: int) -> bytes:
    archive = zip_of([("m.png", png_bytes(16))], zipfile.ZIP_STORED)
    archive = _patch_central(archive, 0, 10, struct.pack("<H", method))
    return _patch_local(archive, 0, 8, struct.pack("<H", method))


def zip_encrypted_only() -> bytes:
    archive = zip_of([("secret.png", png_bytes(16))], zipfile.ZIP_STORED)
    archive = _patch_central(archive, 0, 8, struct.pack("<H", 1))
    return _patch_local(archive, 0, 6, struct.pack("<H", 1))


def zip_local_name_differs() -> bytes:
    archive = zip_of([("aaaa.png", png_bytes(16))], zipfile.ZIP_STORED)
    return _patch_local(archive, 0, 30, b"bbbb")


def zip_offset_out_of_range() -> bytes:
    archive = zip_of([("far.png", png_bytes(16))], zipfile.ZIP_STORED)
    return _patch_central(archive, 0, 42, struct.pack("<I", 0x7FFFFFF0))


def zip_directory_offset_points_at_garbage() -> bytes:
    archive = zip_of([("g.png", png_bytes(16))], zipfile.ZIP_STORED)
    return _patch_central(archive, 0, 42, struct.pack("<I", 5))


def zip_long_name() -> bytes:
    return zip_of([("d/" * 600 + "x.png", png_bytes(16))])


def polyglot_png_zip() -> bytes:
    """A valid PNG with a ZIP archive appended: a PNG to every viewer."""
    return png_bytes(48, seed=11) + zip_of([("inner.png", png_bytes(16))])


def polyglot_jpeg_html() -> bytes:
    return encode(ct_slice(48, seed=12), "JPEG") + b"<html><script>alert(1)</script></html>"


def png_signature_then_html() -> bytes:
    return PNG_SIGNATURE + b"<html><body>not really</body></html>" * 4


def html_as_png() -> bytes:
    return b"<!doctype html><svg onload=alert(1)></svg>" * 4


def other_format(fmt: str) -> bytes:
    return encode(ct_slice(16), fmt)

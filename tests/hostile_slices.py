"""Hostile DICOM CT slices: CT_small with one image attribute's raw bytes replaced, and
Deflated files (a valid one, a bomb, a corrupt stream). Each builder costs milliseconds.
"""

from __future__ import annotations

import io
import zlib

from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.dicom_files import ct_dataset, to_bytes

RESCALE_SLOPE = 0x00281053
RESCALE_INTERCEPT = 0x00281052
PADDING_VALUE = 0x00280120
PADDING_LIMIT = 0x00280121
NUMBER_OF_FRAMES = 0x00280008

# name: (tag, VR, raw value bytes, the words of the reason the slice fails with)
BAD_SLICES = {
    "slope-abc": (RESCALE_SLOPE, "DS", b"abc", "RescaleSlope is not a number"),
    "slope-two-values": (
        RESCALE_SLOPE,
        "DS",
        b"1\\2",
        "RescaleSlope must be one number, it holds 2 values",
    ),
    "slope-nan": (RESCALE_SLOPE, "DS", b"NaN", "RescaleSlope is not a finite number"),
    "slope-inf": (RESCALE_SLOPE, "DS", b"inf", "RescaleSlope is not a finite number"),
    "slope-zero": (RESCALE_SLOPE, "DS", b"0", "RescaleSlope is 0"),
    "slope-overflow": (RESCALE_SLOPE, "DS", b"1e308", "beyond any finite number"),
    "intercept-minus-inf": (
        RESCALE_INTERCEPT,
        "DS",
        b"-inf",
        "RescaleIntercept is not a finite number",
    ),
    "padding-two-values": (
        PADDING_VALUE,
        "SS",
        b"\x00\x00\x05\x00",
        "PixelPaddingValue must be one number, it holds 2 values",
    ),
    "frames-abc": (NUMBER_OF_FRAMES, "IS", b"abc", "NumberOfFrames is not a number"),
}


def with_raw(tag: int, vr: str, value: bytes) -> bytes:
    """CT_small with element ``tag`` holding exactly ``value`` (padded to even length)."""
    dataset = ct_dataset()
    if len(value) % 2:
        value += b" "
    dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return to_bytes(dataset)


def bad_slice(name: str) -> bytes:
    tag, vr, value, _ = BAD_SLICES[name]
    return with_raw(tag, vr, value)


def deflated_ct(meta_padding: int = 0) -> bytes:
    """CT_small as a Deflated Explicit VR Little Endian file (pydicom deflates on save);
    ``meta_padding`` bytes of private information make the file meta that much longer."""
    dataset = ct_dataset()
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if meta_padding:
        dataset.file_meta.PrivateInformationCreatorUID = "1.2.3"
        dataset.file_meta.PrivateInformation = bytes(meta_padding)
    return to_bytes(dataset)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(preamble and file meta, dataset) of a Part 10 file."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    source = io.BytesIO(data)
    read_preamble(source, force=False)
    _read_file_meta_info(source)
    return data[: source.tell()], data[source.tell() :]


def deflate_bomb(inflated_bytes: int = 256 * 1024 * 1024, meta_padding: int = 0) -> bytes:
    """A Deflated CT slice whose dataset inflates to about ``inflated_bytes``: CT_small,
    then a private OB element of zeros after the pixels. About 1/1000 of that on disk."""
    head, _ = _split(deflated_ct(meta_padding))
    _, body = _split(to_bytes(ct_dataset()))
    padding = inflated_bytes - len(body)
    element = b"\xe1\x7f\x00\x10" + b"OB\x00\x00" + padding.to_bytes(4, "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body + element)]
    zeros = bytes(1024 * 1024)
    for start in range(0, padding, len(zeros)):
        parts.append(compressor.compress(zeros[: min(len(zeros), padding - start)]))
    parts.append(compressor.flush())
    return head + b"".join(parts)


def deflate_corrupt() -> bytes:
    """A Deflated CT slice whose deflate stream is garbage."""
    head, _ = _split(deflated_ct())
    return head + b"\xff" * 64

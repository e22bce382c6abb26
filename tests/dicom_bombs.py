"""Hostile DICOM files, written byte by byte where pydicom would refuse to write them.

Each starts from the CT slice that ships with pydicom (``tests/dicom_files.py``), so what
makes it hostile is the one thing it changes: a Deflated data set that inflates a
thousandfold, a corrupt deflate stream, private sequences nested hundreds deep, a flood
of tiny elements, or a frame count in the millions.
"""

from __future__ import annotations

import io
import struct
import zlib

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tests import dicom_files as d

PRIVATE_CREATOR = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"HOSTILE "
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


def _tag(tag: tuple[int, int], length: int) -> bytes:
    return struct.pack("<HHL", *tag, length)


def _meta(syntax: str) -> bytes:
    """The preamble, ``DICM`` and the CT slice's file meta, naming ``syntax``."""
    meta = d.ct_dataset().file_meta
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buffer.getvalue()


def _elements(below: int = 0x7FE10000, from_tag: int = 0, implicit: bool = False) -> bytes:
    """The CT slice's elements with tags in [from_tag, below), encoded."""
    dataset = d.ct_dataset()
    # A Dataset iterates over its elements; keys() gives the tags.
    for tag in [t for t in dataset.keys() if not from_tag <= t < below]:  # noqa: SIM118
        del dataset[tag]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def _with_private(private: bytes, implicit: bool = False) -> bytes:
    """The CT slice's data set with ``private`` (group 0009 elements) in tag order."""
    return (
        _elements(0x00090000, implicit=implicit)
        + private
        + _elements(from_tag=0x00090000, implicit=implicit)
    )


def deflated_ct() -> bytes:
    """The CT slice, valid, in the Deflated Explicit VR Little Endian transfer syntax."""
    return _meta(DeflatedExplicitVRLittleEndian) + _raw_deflate(_elements())


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def deflate_bomb(inflated: int) -> bytes:
    """A Deflated CT slice whose trailing padding (FFFC,FFFC) is ``inflated`` zero bytes:
    about a thousandth of that on the wire. Built in steps, never whole in memory."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [_meta(DeflatedExplicitVRLittleEndian), packer.compress(_elements())]
    out.append(packer.compress(struct.pack("<HH2s2sL", 0xFFFC, 0xFFFC, b"OB", b"\0\0", inflated)))
    zeros, left = bytes(1024 * 1024), inflated
    while left:
        out.append(packer.compress(zeros[: min(left, len(zeros))]))
        left -= min(left, len(zeros))
    out.append(packer.flush())
    return b"".join(out)


def corrupt_deflate() -> bytes:
    """A Deflated CT slice whose stream is cut and patched with bytes no inflater takes."""
    good = deflated_ct()
    middle = len(good) // 2
    return good[:middle] + b"\xff" * 64 + good[middle + 64 :]


def nested_sequences(depth: int, implicit: bool = False) -> bytes:
    """The CT slice with a private sequence holding one item holding a sequence ... ``depth``
    levels deep, each of undefined length (so a reader must recurse to find their ends)."""
    if implicit:
        opening = _tag((0x0009, 0x1001), _UNDEFINED) + _tag(_ITEM, _UNDEFINED)
    else:
        opening = struct.pack("<HH2s2sL", 0x0009, 0x1001, b"SQ", b"\0\0", _UNDEFINED) + _tag(
            _ITEM, _UNDEFINED
        )
    closing = _tag(_ITEM_END, 0) + _tag(_SEQUENCE_END, 0)
    private = PRIVATE_CREATOR if not implicit else _tag((0x0009, 0x0010), 8) + b"HOSTILE "
    body = _with_private(private + opening * depth + closing * depth, implicit)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return _meta(syntax) + body


def element_flood(count: int) -> bytes:
    """The CT slice with a private sequence of ``count`` items of one short element each."""
    item = _tag(_ITEM, 10) + struct.pack("<HH2sH", 0x0009, 0x1002, b"LO", 2) + b"AB"
    flood = (
        struct.pack("<HH2s2sL", 0x0009, 0x1001, b"SQ", b"\0\0", len(item) * count) + item * count
    )
    return _meta(ExplicitVRLittleEndian) + _with_private(PRIVATE_CREATOR + flood)


def many_frames(frames: int) -> bytes:
    """A small CT file declaring ``frames`` frames (its pixel data holds one)."""
    return d.ct_bytes(NumberOfFrames=frames)


def tiny_many_frames(frames: int) -> bytes:
    """A file of 2×2 frames: complete up to 1,000 frames, else a few hundred bytes that
    declare ``frames`` frames and hold one."""
    dataset = d.ct_dataset()
    keep = {
        "SOPClassUID",
        "SOPInstanceUID",
        "Modality",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SamplesPerPixel",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PhotometricInterpretation",
    }
    for element in list(dataset):
        if element.keyword not in keep:
            del dataset[element.tag]
    dataset.Rows = dataset.Columns = 2
    dataset.NumberOfFrames = frames
    dataset.PixelData = b"\0" * 8 * (frames if frames <= 1000 else 1)
    return d.to_bytes(dataset)


def zip_holding(*entries: tuple[str, bytes]) -> bytes:
    return d.zip_of(dict(entries))


def readable(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)

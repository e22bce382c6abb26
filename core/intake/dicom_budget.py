"""A DICOM file's structure measured before pydicom parses it, within a budget.

pydicom inflates a Deflated file whole, builds every element it meets and parses nested
sequences by recursion: a 262 KB file can inflate to 256 MiB, a file of tiny elements
becomes millions of objects, and sequences nested a few hundred deep overflow the stack.
This module walks the encoded bytes once, without recursion and without keeping anything,
counting elements and sequence depth and reading the frame count, and inflates a Deflated
data set in bounded steps. A file over budget is refused before pydicom sees it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Optional

from core.errors import Malformed, TooLarge

DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_NUMBER_OF_FRAMES, _PIXEL_DATA, _TRANSFER_SYNTAX = 0x00280008, 0x7FE00010, 0x00020010
_GROUP_LENGTH, _SOP_CLASS, _SOP_INSTANCE = 0x00020000, 0x00020002, 0x00020003
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_INFLATE_STEP = 1024 * 1024
PART10_START = 132  # the 128-byte preamble and "DICM"


@dataclass(frozen=True)
class HeaderBudget:
    """What reading one DICOM header may cost.

    ``max_bytes``: the data set's size once inflated (MAX_SCAN_BYTES, or what is left of
    MAX_EXPANDED_BYTES); ``max_frames``: the frames the job still has room for
    (MAX_SCANS_PER_JOB); ``max_depth``: sequences within sequences; elements: a base
    allowance plus ``elements_per_frame`` for each frame declared.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_frames: int = 10_000
    max_depth: int = 16
    max_elements: int = 20_000
    elements_per_frame: int = 100
    bytes_limit_name: str = "MAX_SCAN_BYTES"
    frames_limit: Optional[int] = None  # MAX_SCANS_PER_JOB, when max_frames is what is left


@dataclass(frozen=True)
class _Walked:
    end: int  # where the walk stopped (the data set's start, for the file meta)
    values: dict[int, tuple[int, bytes]]  # wanted top-level tags: (element offset, value)


def _walk(
    data: bytes,
    pos: int,
    budget: HeaderBudget,
    shown_as: str,
    *,
    implicit: bool,
    little: bool,
    meta: bool = False,
    want: tuple[int, ...] = (),
) -> _Walked:
    """Walk elements from ``pos`` (the file meta when ``meta``: until its group ends).

    Raises:
        TooLarge: more elements than the budget, or more frames than the job has room for.
        Malformed: sequences nested deeper than ``budget.max_depth``.
    """
    order = "<" if little else ">"
    tag_length = struct.Struct(order + "HHL")
    explicit_head = struct.Struct(order + "HH2sH")
    long_length = struct.Struct(order + "L")
    ends: list[Optional[int]] = []  # open sequences and items: their end, None if delimited
    kinds: list[bool] = []  # True for a sequence, False for an item
    depth = elements = 0
    allowed = budget.max_elements
    values: dict[int, tuple[int, bytes]] = {}
    size = len(data)
    while pos + 8 <= size:
        while ends and ends[-1] is not None and pos >= ends[-1]:
            depth -= kinds.pop()
            ends.pop()
        start = pos
        group, element, length = tag_length.unpack_from(data, pos)
        tag = group << 16 | element
        if meta and not ends and group != 0x0002:
            break
        if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
            pos += 8
            if tag == _ITEM:
                ends.append(None if length == _UNDEFINED else pos + length)
                kinds.append(False)
            else:  # a delimiter closes the innermost open item (or sequence)
                while ends:
                    was_sequence = kinds.pop()
                    ends.pop()
                    depth -= was_sequence
                    if was_sequence == (tag == _SEQUENCE_END):
                        break
            continue
        elements += 1
        if elements > allowed:
            raise TooLarge(
                f"{shown_as} holds more than {allowed} DICOM elements (the limit "
                f"is {budget.max_elements} plus {budget.elements_per_frame} per "
                "frame)",
                filename=shown_as,
            )
        vr: Optional[bytes] = None
        if implicit and not meta:
            pos += 8
        else:
            _, _, vr, short_length = explicit_head.unpack_from(data, pos)
            pos += 8
            if b"AA" <= vr <= b"ZZ":
                length = short_length
            else:  # not a VR: read on as implicit VR, as pydicom does (a 4-byte length)
                vr = None
            if vr in _LONG_VRS:
                if pos + 4 > size:
                    break
                length = long_length.unpack_from(data, pos)[0]
                pos += 4
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA or (vr is not None and vr not in (b"SQ", b"UN")):
                pos = _skip_fragments(data, pos, tag_length)
                continue
            vr = b"SQ"
        elif vr is None:
            vr = _implicit_vr(tag)
        if vr == b"SQ":
            depth += 1
            if depth > budget.max_depth:
                raise Malformed(
                    f"{shown_as} nests DICOM sequences more than {budget.max_depth} deep",
                    filename=shown_as,
                )
            ends.append(None if length == _UNDEFINED else pos + length)
            kinds.append(True)
            continue
        if not ends and tag in want:
            values[tag] = (start, data[pos : pos + length])
            if tag == _NUMBER_OF_FRAMES:
                frames = _frames(values[tag][1])
                _check_frames(frames, budget, shown_as)
                allowed = budget.max_elements + budget.elements_per_frame * max(frames, 1)
        pos += length
    return _Walked(pos, values)


def _skip_fragments(data: bytes, pos: int, tag_length: struct.Struct) -> int:
    """Past encapsulated pixel data: items of raw bytes, then a sequence delimiter."""
    while pos + 8 <= len(data):
        group, element, length = tag_length.unpack_from(data, pos)
        pos += 8
        if (group << 16 | element) != _ITEM or length == _UNDEFINED:
            break
        pos += length
    return pos


def _implicit_vr(tag: int) -> Optional[bytes]:
    """The dictionary's VR of a tag (implicit VR carries none); None for a private tag."""
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag).encode("ascii")
    except KeyError:
        return None


def _frames(value: bytes) -> int:
    """The frame count as the header read takes it: one when it is not a whole number."""
    try:
        return int(value.decode("ascii", "replace").strip(" \x00"))
    except ValueError:
        return 1


def _check_frames(frames: int, budget: HeaderBudget, shown_as: str) -> None:
    if frames <= budget.max_frames:
        return
    limit = budget.frames_limit or budget.max_frames
    left = (
        ""
        if budget.frames_limit in (None, budget.max_frames)
        else f", {budget.max_frames} left in this job"
    )
    raise TooLarge(
        f"{shown_as} declares {frames} frames; a job holds at most {limit} scans "
        f"(MAX_SCANS_PER_JOB){left}",
        filename=shown_as,
    )


def _inflate(deflated: bytes, budget: HeaderBudget, shown_as: str) -> bytes:
    """The data set of a Deflated file, refused once it grows past ``budget.max_bytes``.

    The size is measured first in steps whose output is dropped, so refusing a bomb costs
    one step of memory; only a data set within the budget is inflated whole.
    """
    limit = budget.max_bytes
    try:
        measure = zlib.decompressobj(-zlib.MAX_WBITS)
        total, pending = 0, deflated
        while pending and not measure.eof:
            total += len(measure.decompress(pending, _INFLATE_STEP))
            if total > limit:
                raise TooLarge(
                    f"{shown_as} (Deflated transfer syntax) inflates to more than "
                    f"the limit of {limit} bytes ({budget.bytes_limit_name})",
                    filename=shown_as,
                )
            pending = measure.unconsumed_tail
        if not measure.eof:
            raise Malformed(f"{shown_as} has a truncated deflate stream", filename=shown_as)
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated, limit + 1)
    except zlib.error as exc:
        raise Malformed(
            f"{shown_as} has a corrupt deflate stream: {exc}", filename=shown_as
        ) from None


def _explicit_meta(data: bytes, walked: _Walked) -> bytes:
    """The file meta with Explicit VR Little Endian as its transfer syntax (group length
    corrected), for the inflated data set that follows it."""
    offset, old = walked.values[_TRANSFER_SYNTAX]
    new = EXPLICIT_LITTLE.encode("ascii") + b"\x00"
    meta = bytearray(data[PART10_START : walked.end])
    if _GROUP_LENGTH in walked.values:
        at = walked.values[_GROUP_LENGTH][0] - PART10_START + 8
        (length,) = struct.unpack_from("<L", meta, at)
        struct.pack_into("<L", meta, at, length + len(new) - len(old))
    start = offset - PART10_START
    meta[start : start + 8 + len(old)] = struct.pack("<HH2sH", 2, 0x10, b"UI", len(new)) + new
    return bytes(meta)


def file_meta_uids(data: bytes) -> tuple[Optional[str], Optional[str]]:
    """The SOP class and instance UIDs a Part 10 file's meta names (never deflated, so
    read without inflating anything); None for what it lacks or cannot be read."""
    try:
        walked = _walk(
            data,
            PART10_START,
            HeaderBudget(),
            "the instance",
            implicit=False,
            little=True,
            meta=True,
            want=(_SOP_CLASS, _SOP_INSTANCE),
        )
    except (TooLarge, Malformed):
        return None, None
    uids = [
        walked.values.get(tag, (0, b""))[1].decode("ascii", "replace").strip(" \x00")
        for tag in (_SOP_CLASS, _SOP_INSTANCE)
    ]
    return uids[0][:64] or None, uids[1][:64] or None


def check_structure(data: bytes, shown_as: str, budget: HeaderBudget) -> tuple[str, bytes]:
    """Measure a Part 10 file against ``budget``; its transfer syntax and the bytes pydicom
    may parse (for a Deflated file, the data set inflated behind an Explicit VR Little
    Endian file meta: the same object, which pydicom reads without inflating anything).

    Raises:
        TooLarge: inflates past the budget's bytes, declares more frames than the job has
            room for, or holds too many elements.
        Malformed: a corrupt or truncated deflate stream, or sequences nested too deep.
    """
    walked = _walk(
        data,
        PART10_START,
        budget,
        shown_as,
        implicit=False,
        little=True,
        meta=True,
        want=(_TRANSFER_SYNTAX, _GROUP_LENGTH),
    )
    raw_syntax = walked.values.get(_TRANSFER_SYNTAX, (0, b""))[1]
    syntax = raw_syntax.decode("ascii", "replace").strip(" \x00")
    body = data[walked.end :]
    parsed = data
    if syntax == DEFLATED:
        body = _inflate(body, budget, shown_as)
        parsed = data[:PART10_START] + _explicit_meta(data, walked) + body
    implicit = syntax == IMPLICIT_LITTLE or (not syntax and not body[4:6].isalpha())
    _walk(
        body,
        0,
        budget,
        shown_as,
        implicit=implicit,
        little=syntax != EXPLICIT_BIG,
        want=(_NUMBER_OF_FRAMES,),
    )
    return syntax, parsed

"""Structural checks on a ZIP archive, made from its directory before any entry is expanded.

``zipfile`` trusts the central directory: entries that share or overlap their bytes
(the trick behind "overlapping" ZIP bombs), names that are not what their flags say and
entries that expand a thousandfold all pass it. These checks refuse such archives.
"""

from __future__ import annotations

import struct
import zipfile
from typing import IO

from core.errors import Malformed, TooLarge

MAX_NAME_BYTES = 1024
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_DATA_DESCRIPTOR_FLAG = 0x8


def printable(name: str, limit: int = 200) -> str:
    """A file name safe to put in a message: NULs and undecodable characters escaped."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= limit else text[:limit] + "…"


def check_name(name: str, where: str) -> None:
    """Refuse (Malformed) a file name with a NUL, undecodable bytes or more than 1,024 bytes."""
    where = printable(where)
    if "\x00" in name:
        raise Malformed(f"{where}: a file name contains a NUL character", filename=where)
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise Malformed(f"{where}: a file name is not valid UTF-8", filename=where) from None
    if len(encoded) > MAX_NAME_BYTES:
        raise Malformed(
            f"a file name is {len(encoded)} bytes long, above the limit of {MAX_NAME_BYTES}",
            filename=where,
        )


def open_archive(stream: IO[bytes], archive_name: str) -> zipfile.ZipFile:
    """Open a ZIP archive, refusing (Malformed) one that cannot be read or whose names lie."""
    try:
        return zipfile.ZipFile(stream)
    except UnicodeDecodeError:
        raise Malformed(
            f"{archive_name}: an entry name is flagged UTF-8 but is not valid UTF-8",
            filename=archive_name,
        ) from None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        ValueError,
        EOFError,
        struct.error,
        NotImplementedError,
    ) as exc:
        raise Malformed(
            f"{archive_name} is not a readable ZIP archive: {exc}", filename=archive_name
        ) from None


def _data_extent(stream: IO[bytes], info: zipfile.ZipInfo, archive_name: str) -> tuple[int, int]:
    """Where an entry's local header starts and where its data ends."""
    stream.seek(info.header_offset)
    header = stream.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise Malformed(
            f"{archive_name}/{info.filename}: the archive directory points at "
            "no local entry header",
            filename=archive_name,
        )
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    end = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    if info.flag_bits & _DATA_DESCRIPTOR_FLAG:
        end += 12  # the smallest data descriptor (no signature, 32-bit sizes)
    return info.header_offset, end


def check_archive(
    archive: zipfile.ZipFile, stream: IO[bytes], archive_name: str, max_entries: int, max_ratio: int
) -> None:
    """Refuse, before expanding anything, an archive that could not be a plain batch of slices.

    Raises:
        TooLarge: too many entries, or an entry that expands more than ``max_ratio`` times.
        Malformed: entries that overlap, or names that are NUL-bearing, undecodable or
            longer than 1,024 bytes.
    """
    infos = archive.infolist()
    if len(infos) > max_entries:
        raise TooLarge(
            f"{archive_name} holds {len(infos)} entries, above the limit of "
            f"{max_entries} per archive (MAX_ARCHIVE_ENTRIES)",
            filename=archive_name,
        )
    extents = []
    for info in infos:
        check_name(info.orig_filename, f"{archive_name}/{info.filename}")
        if info.file_size > 0 and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise TooLarge(
                f"{archive_name}/{info.filename} expands {ratio:.0f} times "
                f"({info.compress_size} → {info.file_size} bytes), above the "
                f"limit of {max_ratio} (MAX_COMPRESSION_RATIO)",
                filename=f"{archive_name}/{info.filename}",
            )
        extents.append((*_data_extent(stream, info, archive_name), info.filename))
    extents.sort()
    directory_start = archive.start_dir
    for (_start, end, name), following in zip(extents, extents[1:] + [None]):
        limit = directory_start if following is None else following[0]
        if end > limit:
            other = "the archive directory" if following is None else following[2]
            raise Malformed(
                f"{archive_name}: entries {name} and {other} overlap "
                "(overlapping ZIP entries are refused)",
                filename=archive_name,
            )
    stream.seek(0)

"""Cheap checks on uploaded parts: PNG, JPEG or a ZIP of them, told apart by content."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator, Optional

import filetype

from api.problems import Problem

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
ZIP_TYPE = "application/zip"
SNIFF_BYTES = 262


@dataclass(frozen=True)
class ScanUpload:
    """One image that passed the cheap checks; decoding happens later, in a worker."""

    filename: str
    data: bytes


@dataclass(frozen=True)
class Skipped:
    filename: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"filename": self.filename, "reason": self.reason}


@dataclass
class UploadLimits:
    max_scan_bytes: int
    max_scans: int


@dataclass
class ParsedUpload:
    skipped: list[Skipped] = field(default_factory=list)
    count: int = 0


def sniff(head: bytes) -> Optional[str]:
    """MIME type of the content (PNG, JPEG or ZIP), or None for anything else."""
    kind = filetype.guess(head)
    if kind is None:
        return ZIP_TYPE if head.startswith(b"PK\x05\x06") else None  # empty ZIP
    if kind.mime in IMAGE_TYPES or kind.mime == ZIP_TYPE:
        return kind.mime
    return None


def _read_limited(stream: IO[bytes], limit: int, filename: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, f"{filename} is larger than the per-scan limit of {limit} bytes "
                           "(MAX_SCAN_BYTES)", filename=filename)
    return data


def _zip_entries(stream: IO[bytes], archive_name: str, limits: UploadLimits,
                 parsed: ParsedUpload) -> Iterator[ScanUpload]:
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Problem(400, f"{archive_name} is not a readable ZIP archive: {exc}",
                      filename=archive_name) from None
    with archive:
        for info in archive.infolist():
            name = f"{archive_name}/{info.filename}"
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                parsed.skipped.append(Skipped(name, "encrypted ZIP entries are not supported"))
                continue
            if info.file_size > limits.max_scan_bytes:
                raise Problem(413, f"{name} is larger than the per-scan limit of "
                                   f"{limits.max_scan_bytes} bytes (MAX_SCAN_BYTES)", filename=name)
            try:
                with archive.open(info) as entry:
                    data = _read_limited(entry, limits.max_scan_bytes, name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise Problem(400, f"{name} cannot be read from the archive: {exc}",
                              filename=name) from None
            kind = sniff(data[:SNIFF_BYTES])
            if kind in IMAGE_TYPES:
                yield ScanUpload(info.filename, data)
            elif kind == ZIP_TYPE:
                parsed.skipped.append(Skipped(name, "nested ZIP archives are not expanded"))
            else:
                parsed.skipped.append(Skipped(name, "not a PNG or JPEG image"))


def iter_scans(parts: Iterable[tuple[str, IO[bytes]]], limits: UploadLimits,
               parsed: ParsedUpload) -> Iterator[ScanUpload]:
    """Yield the scans in upload order; record skipped ZIP entries in ``parsed``.

    Raises:
        Problem: 415 for a part that is neither PNG, JPEG nor ZIP; 413 over a limit;
            400 for an unreadable archive.
    """
    for filename, stream in parts:
        head = stream.read(SNIFF_BYTES)
        stream.seek(0)
        kind = sniff(head)
        if kind is None:
            what = "empty" if not head else "neither a PNG, a JPEG nor a ZIP archive"
            raise Problem(415, f"{filename} is {what} (checked by content, not by name)",
                          filename=filename)
        scans = (_zip_entries(stream, filename, limits, parsed) if kind == ZIP_TYPE
                 else [ScanUpload(filename, _read_limited(stream, limits.max_scan_bytes, filename))])
        for scan in scans:
            parsed.count += 1
            if parsed.count > limits.max_scans:
                raise Problem(413, f"a job holds at most {limits.max_scans} scans "
                                   "(MAX_SCANS_PER_JOB)")
            yield scan

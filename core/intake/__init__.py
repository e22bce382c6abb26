"""Cheap checks on uploaded parts: PNG, JPEG, DICOM or a ZIP of them, told apart by content."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Optional

import filetype

from core.errors import Malformed, TooLarge, Unsupported
from core.intake.archives import check_archive, check_name, open_archive
from core.intake.dicom_budget import HeaderBudget
from core.intake.dicom_header import (
    DEFAULT_MODALITIES,
    DICOM_TYPE,
    DicomSlice,
    NotAnImage,
    check_complete,
    is_dicom,
    read_dicom_header,
)
from core.intake.image_header import check_pixels, read_header
from core.intake.intended_use import IntendedUse
from core.intake.scans import parse_modalities, scans_of
from core.patient import SealedPatient, patient_sealer
from core.sealing import Sealer
from covidscan.settings import Settings

__all__ = [
    "IMAGE_TYPES",
    "SNIFF_BYTES",
    "ZIP_TYPE",
    "IntendedUse",
    "ParsedUpload",
    "ScanUpload",
    "Skipped",
    "UploadLimits",
    "check_stored_slice",
    "iter_scans",
    "parse_modalities",
    "scans_of",
    "sniff",
]

IMAGE_TYPES = {"image/png": "PNG", "image/apng": "PNG", "image/jpeg": "JPEG"}
ZIP_TYPE = "application/zip"
SNIFF_BYTES = 262


@dataclass(frozen=True)
class ScanUpload:
    """One image that passed the cheap checks; decoding happens later, in a worker."""

    filename: str
    data: bytes
    # A DICOM file: one entry per frame (each frame is a scan); empty for PNG and JPEG.
    dicom: tuple[DicomSlice, ...] = ()
    # A DICOM file's patient and study attributes, sealed (None without PHI_KEY).
    patient: Optional[SealedPatient] = None

    @property
    def scan_count(self) -> int:
        return len(self.dicom) or 1


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
    max_scan_pixels: int = 4096 * 4096
    max_expanded_bytes: int = 512 * 1024 * 1024
    max_archive_entries: int = 10_000
    max_compression_ratio: int = 200
    # Which DICOM modalities are classified; other DICOM images are skipped with the reason.
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    # DICOM images outside the model's intended use are skipped with the reason; None: no
    # such check (the settings always set it).
    intended_use: Optional[IntendedUse] = None
    # Seals each DICOM file's patient and study attributes (PHI_KEY); None: they are not kept.
    sealer: Optional[Sealer] = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(
            settings.max_scan_bytes,
            settings.max_scans_per_job,
            settings.max_scan_pixels,
            settings.max_expanded_bytes,
            settings.max_archive_entries,
            settings.max_compression_ratio,
            intended_use=IntendedUse.from_settings(settings),
            sealer=patient_sealer(settings.phi_key),
        )


@dataclass
class ParsedUpload:
    skipped: list[Skipped] = field(default_factory=list)
    count: int = 0
    expanded_bytes: int = 0

    def header_budget(self, limits: UploadLimits, counted: int) -> HeaderBudget:
        """What reading the next DICOM header may cost: its inflated bytes within
        MAX_SCAN_BYTES and what is left of MAX_EXPANDED_BYTES (``counted``: its own bytes,
        spent already), its frames within what is left of MAX_SCANS_PER_JOB."""
        room = limits.max_expanded_bytes - self.expanded_bytes + counted
        by_scan = limits.max_scan_bytes <= room
        return HeaderBudget(
            max_bytes=limits.max_scan_bytes if by_scan else max(room, 0),
            bytes_limit_name="MAX_SCAN_BYTES" if by_scan else "MAX_EXPANDED_BYTES",
            max_frames=max(limits.max_scans - self.count, 0),
            frames_limit=limits.max_scans,
        )

    def spend(self, size: int, limits: UploadLimits, filename: str) -> None:
        """Count ``size`` bytes against the request's expansion budget (TooLarge past it)."""
        self.expanded_bytes += size
        if self.expanded_bytes > limits.max_expanded_bytes:
            raise TooLarge(
                f"the upload expands to more than {limits.max_expanded_bytes} "
                f"bytes at {filename} (MAX_EXPANDED_BYTES)",
                filename=filename,
            )


def sniff(head: bytes) -> Optional[str]:
    """MIME type of the content (PNG, JPEG, DICOM or ZIP), or None for anything else."""
    if is_dicom(head):
        return DICOM_TYPE
    kind = filetype.guess(head)
    if kind is None:
        return ZIP_TYPE if head.startswith(b"PK\x05\x06") else None  # empty ZIP
    if kind.mime in IMAGE_TYPES or kind.mime == ZIP_TYPE:
        return kind.mime
    return None


def _read_limited(stream: IO[bytes], limit: int, filename: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(
            f"{filename} is larger than the per-scan limit of {limit} bytes (MAX_SCAN_BYTES)",
            filename=filename,
        )
    return data


def _scan(
    filename: str,
    data: bytes,
    kind: str,
    limits: UploadLimits,
    parsed: ParsedUpload,
    shown_as: Optional[str] = None,
) -> Optional[ScanUpload]:
    """An image whose header declares no more than ``MAX_SCAN_PIXELS`` pixels (per frame);
    None for a DICOM object that is not a slice to classify (recorded as skipped).

    ``shown_as``: how errors name it (an archive's entries as ``archive.zip/entry``).
    """
    shown_as = shown_as or filename
    if kind == DICOM_TYPE:
        try:
            dicom = read_dicom_header(
                data,
                shown_as,
                limits.modalities,
                parsed.header_budget(limits, len(data)),
                limits.intended_use,
                limits.sealer,
            )
        except NotAnImage as exc:
            parsed.skipped.append(Skipped(shown_as, str(exc)))
            return None
        check_pixels(dicom, limits.max_scan_pixels, shown_as)
        check_complete(dicom, shown_as)
        return ScanUpload(filename, data, dicom.slices, dicom.patient)
    header = read_header(data, IMAGE_TYPES[kind], shown_as)
    check_pixels(header, limits.max_scan_pixels, shown_as)
    return ScanUpload(filename, data)


def _zip_entries(
    stream: IO[bytes], archive_name: str, limits: UploadLimits, parsed: ParsedUpload
) -> Iterator[ScanUpload]:
    archive = open_archive(stream, archive_name)
    with archive:
        check_archive(
            archive, stream, archive_name, limits.max_archive_entries, limits.max_compression_ratio
        )
        for info in archive.infolist():
            name = f"{archive_name}/{info.filename}"
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                parsed.skipped.append(Skipped(name, "encrypted ZIP entries are not supported"))
                continue
            if info.file_size > limits.max_scan_bytes:
                raise TooLarge(
                    f"{name} is larger than the per-scan limit of "
                    f"{limits.max_scan_bytes} bytes (MAX_SCAN_BYTES)",
                    filename=name,
                )
            parsed.spend(info.file_size, limits, name)
            try:
                with archive.open(info) as entry:
                    data = _read_limited(entry, limits.max_scan_bytes, name)
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                ValueError,
                NotImplementedError,
                zlib.error,
            ) as exc:
                raise Malformed(
                    f"{name} cannot be read from the archive: {exc}", filename=name
                ) from None
            kind = sniff(data[:SNIFF_BYTES])
            if kind in IMAGE_TYPES or kind == DICOM_TYPE:
                scan = _scan(info.filename, data, kind, limits, parsed, shown_as=name)
                if scan is not None:
                    yield scan
            elif kind == ZIP_TYPE:
                parsed.skipped.append(Skipped(name, "nested ZIP archives are not expanded"))
            else:
                parsed.skipped.append(Skipped(name, "not a PNG, JPEG or DICOM image"))


def check_stored_slice(filename: str, head: bytes, size: int, limits: UploadLimits) -> None:
    """The checks of :func:`iter_scans` for one slice already in the blob store, from its
    size and its first bytes (``head``, which must hold the whole image header).

    Raises:
        TooLarge: over MAX_SCAN_BYTES or MAX_SCAN_PIXELS.
        Unsupported: anything but a PNG or JPEG (ZIP archives included: they go through
            the multipart upload).
        Malformed: an unreadable header.
    """
    if size > limits.max_scan_bytes:
        raise TooLarge(
            f"{filename} is larger than the per-scan limit of "
            f"{limits.max_scan_bytes} bytes (MAX_SCAN_BYTES)",
            filename=filename,
        )
    kind = sniff(head[:SNIFF_BYTES])
    if kind not in IMAGE_TYPES:
        what = (
            "a ZIP archive (send archives in a multipart upload)"
            if kind == ZIP_TYPE
            else "a DICOM file (send DICOM in a multipart upload)"
            if kind == DICOM_TYPE
            else "empty"
            if not head
            else "neither a PNG nor a JPEG image"
        )
        raise Unsupported(
            f"{filename} is {what} (checked by content, not by name)", filename=filename
        )
    _scan(filename, head, kind, limits, ParsedUpload())  # PNG or JPEG: nothing is skipped


def iter_scans(
    parts: Iterable[tuple[str, IO[bytes]]], limits: UploadLimits, parsed: ParsedUpload
) -> Iterator[ScanUpload]:
    """Yield the scans in upload order; record skipped ZIP entries in ``parsed``.

    Raises:
        Unsupported: a part that is neither PNG, JPEG, DICOM nor ZIP.
        TooLarge: over a limit (bytes, pixels, entries, expansion, scans per job).
        Malformed: an unreadable or tricked archive, an unreadable image header or a bad
            file name.
    """
    for filename, stream in parts:
        check_name(filename, filename)
        head = stream.read(SNIFF_BYTES)
        stream.seek(0)
        kind = sniff(head)
        if kind is None:
            what = "empty" if not head else "neither a PNG, a JPEG, a DICOM file nor a ZIP archive"
            raise Unsupported(
                f"{filename} is {what} (checked by content, not by name)", filename=filename
            )
        if kind == ZIP_TYPE:
            scans: Iterable[ScanUpload] = _zip_entries(stream, filename, limits, parsed)
        else:
            data = _read_limited(stream, limits.max_scan_bytes, filename)
            parsed.spend(len(data), limits, filename)
            scan = _scan(filename, data, kind, limits, parsed)
            scans = [] if scan is None else [scan]
        for scan in scans:
            parsed.count += scan.scan_count
            if parsed.count > limits.max_scans:
                raise TooLarge(f"a job holds at most {limits.max_scans} scans (MAX_SCANS_PER_JOB)")
            yield scan

"""What a DICOM Part 10 file declares, read from its header with pydicom; pixels are not decoded.

The API keeps only what places a slice in its series (study, series and instance UIDs,
modality, instance number, position along the patient axis). Patient and study attributes
(name, ID, birth date, accession number, ...) leave the header read only sealed
(:mod:`core.patient`), for a result sent to a PACS; the original file is stored as uploaded
and decoded by a worker.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from core.errors import Malformed, TooLarge
from core.intake.dicom_budget import HeaderBudget, check_structure
from core.intake.intended_use import IntendedUse, read_geometry, slice_normal
from core.patient import SealedPatient, seal_patient
from core.sealing import Sealer

DICOM_TYPE = "application/dicom"
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
DEFAULT_MODALITIES = ("CT",)


def quiet_validation() -> None:
    """Stop pydicom's value checks on reading: their warnings quote values (a malformed
    birth date, a name too long), which would put patient data in the logs."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE


def is_dicom(head: bytes) -> bool:
    """DICOM Part 10: a 128-byte preamble, then ``DICM`` (whatever the file is called)."""
    return head[128:132] == b"DICM"


@dataclass(frozen=True)
class DicomSlice:
    """Where one frame of a DICOM image sits in its study and series."""

    frame: Optional[int]  # None for a single-frame image
    study_uid: Optional[str]
    series_uid: Optional[str]
    sop_instance_uid: Optional[str]
    sop_class_uid: Optional[str]
    modality: Optional[str]
    instance_number: Optional[int]
    slice_position: Optional[float]

    def scan_columns(self) -> dict[str, Any]:
        """The :class:`db.models.Scan` columns that record it."""
        return {
            "frame": self.frame,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "modality": self.modality,
            "instance_number": self.instance_number,
            "slice_position": self.slice_position,
        }


@dataclass(frozen=True)
class DicomHeader:
    rows: int
    columns: int
    frames: int
    bits_allocated: int
    samples_per_pixel: int
    transfer_syntax: str
    slices: tuple[DicomSlice, ...]
    native_bytes: Optional[int] = None  # the pixel data's length when not compressed
    patient: Optional[SealedPatient] = None  # the study's patient attributes, sealed

    @property
    def width(self) -> int:
        return self.columns

    @property
    def height(self) -> int:
        return self.rows

    @property
    def pixels(self) -> int:
        """Pixels of one frame (each frame is a scan of its own)."""
        return self.rows * self.columns


def check_complete(header: DicomHeader, shown_as: str) -> None:
    """Refuse (Malformed) uncompressed pixel data shorter than its declared frames need."""
    expected = header.rows * header.columns * header.frames * header.bits_allocated // 8
    if header.native_bytes is not None and header.native_bytes < expected:
        raise Malformed(
            f"{shown_as} is truncated: its pixel data is {header.native_bytes} "
            f"bytes, {header.frames} frame(s) of {header.columns}×{header.rows} "
            f"at {header.bits_allocated} bits need {expected}",
            filename=shown_as,
        )


class NotAnImage(ValueError):
    """A readable DICOM object that is not a slice to classify; the message says why."""


def _uid(dataset, keyword: str) -> Optional[str]:
    value = dataset.get(keyword)
    return str(value)[:64] if value else None


def _int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _position(position: Sequence, orientation: Sequence) -> Optional[float]:
    """ImagePositionPatient projected on the slice normal (row × column direction cosines)."""
    normal = slice_normal(orientation)
    try:
        point = [float(v) for v in position[:3]]
    except (TypeError, ValueError, IndexError):
        return None
    if normal is None or len(point) != 3:
        return None
    return round(sum(p * n for p, n in zip(point, normal)), 4)


def _frame_positions(dataset, frames: int) -> list[Optional[float]]:
    """Per-frame positions of an enhanced multi-frame image, else the image's own position."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    shared_orientation = None
    if shared:
        plane = shared[0].get("PlaneOrientationSequence")
        shared_orientation = plane[0].get("ImageOrientationPatient") if plane else None
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == frames:
        positions = []
        for group in per_frame:
            plane = group.get("PlanePositionSequence")
            own = group.get("PlaneOrientationSequence")
            orientation = own[0].get("ImageOrientationPatient") if own else shared_orientation
            position = plane[0].get("ImagePositionPatient") if plane else None
            positions.append(
                _position(position, orientation)
                if position is not None and orientation is not None
                else None
            )
        return positions
    position = dataset.get("ImagePositionPatient")
    orientation = dataset.get("ImageOrientationPatient")
    single = _position(position, orientation) if position and orientation else None
    return [single if frames == 1 else None for _ in range(frames)]


def read_dicom_header(
    data: bytes,
    shown_as: str,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    budget: Optional[HeaderBudget] = None,
    intended: Optional[IntendedUse] = None,
    sealer: Optional[Sealer] = None,
) -> DicomHeader:
    """Parse a DICOM file's header (pixel data is skipped, not decoded), once its structure
    is within ``budget`` (:func:`core.intake.dicom_budget.check_structure`); with
    ``intended``, an image outside the model's intended use is not an image to classify;
    with ``sealer``, its patient and study attributes sealed (:func:`core.patient.seal_patient`).

    Raises:
        TooLarge: over the budget (inflated bytes, frames, elements).
        Malformed: the file cannot be parsed, nests sequences too deep or declares an
            empty image.
        NotAnImage: a directory, a report, an object without pixels, another modality
            than ``modalities``, a colour image, or (with ``intended``) a localizer, a
            slice that is not axial or one too thick.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    quiet_validation()
    budget = budget or HeaderBudget()
    syntax, parsed = check_structure(data, shown_as, budget)
    try:
        # The bytes are in memory and within the budget (a Deflated data set inflated
        # already); parsing copies the pixel data element, it does not decode it.
        dataset = pydicom.dcmread(io.BytesIO(parsed))
        has_pixels = "PixelData" in dataset
        sop_class = _uid(dataset, "SOPClassUID") or _uid(
            dataset.file_meta, "MediaStorageSOPClassUID"
        )
        modality = str(dataset.get("Modality", "") or "").strip().upper() or None
        rows, columns = _int(dataset.get("Rows")) or 0, _int(dataset.get("Columns")) or 0
        frames = _int(dataset.get("NumberOfFrames")) or 1
        if frames < 1:
            raise Malformed(f"{shown_as} declares {frames} frames", filename=shown_as)
        if frames > budget.max_frames:  # the structure check has refused it already
            raise TooLarge(
                f"{shown_as} declares {frames} frames, more than the job has "
                "room for (MAX_SCANS_PER_JOB)",
                filename=shown_as,
            )
        bits = _int(dataset.get("BitsAllocated")) or 0
        samples = _int(dataset.get("SamplesPerPixel")) or 1
        positions = _frame_positions(dataset, frames) if has_pixels else []
        instance_number = _int(dataset.get("InstanceNumber"))
        study, series = _uid(dataset, "StudyInstanceUID"), _uid(dataset, "SeriesInstanceUID")
        instance = _uid(dataset, "SOPInstanceUID")
        encapsulated = (
            dataset.file_meta.get("TransferSyntaxUID") is not None
            and dataset.file_meta.TransferSyntaxUID.is_encapsulated
        )
        stored_bytes = len(dataset.PixelData) if has_pixels else 0
        geometry = read_geometry(dataset) if intended is not None and has_pixels else None
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        OverflowError,
        OSError,
        struct.error,
        zlib.error,
    ) as exc:
        raise Malformed(
            f"{shown_as} has an unreadable DICOM header: {str(exc) or type(exc).__name__}",
            filename=shown_as,
        ) from None
    except RecursionError:  # the structure check bounds nesting; kept as a last guard
        raise Malformed(
            f"{shown_as} nests DICOM sequences too deep to read", filename=shown_as
        ) from None
    if sop_class == DIRECTORY_SOP_CLASS:
        raise NotAnImage("a DICOMDIR (a directory of the media, not an image) is ignored")
    if not has_pixels:
        name = pydicom.uid.UID(sop_class).name if sop_class else "unknown"
        raise NotAnImage(f"a DICOM object without pixel data ({name}) is not an image")
    if modality not in modalities:
        raise NotAnImage(
            f"modality {modality or 'unknown'} is not classified (accepted: "
            f"{', '.join(modalities)}; see allow_modality)"
        )
    if samples != 1:
        raise NotAnImage(f"a colour DICOM image ({samples} samples per pixel) is not a CT slice")
    if rows < 1 or columns < 1 or bits not in (1, 8, 16, 32):
        raise Malformed(
            f"{shown_as} declares an empty or malformed image ({columns}×{rows} "
            f"pixels, {bits} bits allocated)",
            filename=shown_as,
        )
    refusal = intended.refusal(geometry) if intended and geometry else None
    if refusal is not None:
        raise NotAnImage(refusal)
    slices = tuple(
        DicomSlice(
            index if frames > 1 else None,
            study,
            series,
            instance,
            sop_class,
            modality,
            instance_number,
            position,
        )
        for index, position in enumerate(positions)
    )
    return DicomHeader(
        rows,
        columns,
        frames,
        bits,
        samples,
        syntax or "unknown",
        slices,
        None if encapsulated else stored_bytes,
        None if sealer is None else seal_patient(dataset, study, sealer, shown_as),
    )

"""What a submission of DICOM files asks for and the scan rows its files become."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from core.errors import Malformed
from core.intake.dicom_header import DEFAULT_MODALITIES
from db.jobs import NewScan

if TYPE_CHECKING:
    from core.intake import ScanUpload

_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


def parse_modalities(raw: str, name: str = "allow_modality") -> tuple[str, ...]:
    """CT, plus the modalities ``raw`` names (``MR,PT``; any case, blanks ignored).

    Raises:
        Malformed: a name that is not a DICOM modality code (``name`` says which field).
    """
    raw = (raw or "").strip().upper()
    extra = [m.strip() for m in raw.split(",") if m.strip()]
    for modality in extra:
        if not _MODALITY.match(modality):
            raise Malformed(
                f"{name} must be DICOM modality codes separated by commas (e.g. MR,PT), got {raw!r}"
            )
    return tuple(dict.fromkeys([*DEFAULT_MODALITIES, *extra]))


def scans_of(upload: ScanUpload, blob_key: str) -> list[NewScan]:
    """One scan row per image: a PNG or JPEG is one, a DICOM file one per frame."""
    if not upload.dicom:
        return [NewScan(upload.filename, blob_key, len(upload.data))]
    return [
        NewScan(upload.filename, blob_key, len(upload.data), where.scan_columns())
        for where in upload.dicom
    ]

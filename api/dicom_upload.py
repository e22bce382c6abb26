"""What a submission of DICOM files asks for and the scan rows its files become."""
from __future__ import annotations

import re

from flask import request

from api.dicom_header import DEFAULT_MODALITIES
from api.problems import Problem
from api.uploads import ScanUpload
from db.jobs import NewScan

_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")


def allowed_modalities() -> tuple[str, ...]:
    """CT, plus the modalities the optional ``allow_modality`` form field names (``MR,PT``)."""
    raw = (request.form.get("allow_modality") or "").strip().upper()
    extra = [m.strip() for m in raw.split(",") if m.strip()]
    for modality in extra:
        if not _MODALITY.match(modality):
            raise Problem(400, f"allow_modality must be DICOM modality codes separated by commas "
                               f"(e.g. MR,PT), got {raw!r}")
    return tuple(dict.fromkeys([*DEFAULT_MODALITIES, *extra]))


def scans_of(upload: ScanUpload, blob_key: str) -> list[NewScan]:
    """One scan row per image: a PNG or JPEG is one, a DICOM file one per frame."""
    if not upload.dicom:
        return [NewScan(upload.filename, blob_key, len(upload.data))]
    return [NewScan(upload.filename, blob_key, len(upload.data), where.scan_columns())
            for where in upload.dicom]

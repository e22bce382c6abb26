"""A series' result as a DICOM Structured Report (TID 1500 measurement report), by highdicom.

The report references the classified instances (the slices that succeeded), states the
series' finding as a qualitative evaluation (COVID-19: yes or no) with P(COVID) as a
measurement, names the algorithm (model name, version, SHA-256, preprocessing, series
rule), and is marked research use only (Content Qualification ``RESEARCH``). It is
de-identified by PS3.15's Basic Application Level Confidentiality Profile with the Retain
UIDs Option (:mod:`core.deidentify`): it carries the study's UIDs, so it belongs with its
images, and nothing else of the source's patient, study or equipment modules but what the
profile keeps (Type 2 attributes empty), with Patient Identity Removed ``YES`` and the
profile recorded.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from pydicom.dataset import Dataset

from core.deidentify import deidentified
from covidscan import __version__
from covidscan.dicom_pixels import MAX_INFLATED_BYTES, inflate
from covidscan.image_errors import ImageDecodeError

RESEARCH_ONLY = "covidscan result, research use only, not for diagnosis"
RESULTS_SERIES_NUMBER = 9901
_LOCAL_SCHEME = "99COVIDSCAN"
UID_PATTERN = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class SeriesFinding:
    """What the report states about one series and which model said it."""

    probability_covid: float
    positive: bool
    rule: str
    model_name: str
    model_version: str
    model_sha256: str
    preprocessing: str


class EvidenceError(ValueError):
    """A classified instance's header cannot be referenced by a report; the message says
    which attribute (never its value)."""


def _text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword) or "").strip("\0 ")


def evidence_header(data: bytes, max_bytes: int = MAX_INFLATED_BYTES) -> Dataset:
    """What a report copies from a classified instance's header (no pixels): its
    :func:`slice_header`, de-identified (:func:`core.deidentify.deidentified`).

    Raises:
        EvidenceError: as :func:`slice_header`.
    """
    return deidentified(slice_header(data, max_bytes))


def slice_header(data: bytes, max_bytes: int = MAX_INFLATED_BYTES) -> Dataset:
    """A classified instance's header as stored (no pixels, not de-identified), with the SOP
    class and instance taken from the file meta when the dataset lacks them.

    Raises:
        EvidenceError: a SOP class, SOP instance, study or series UID is missing or is not
            a UID (digits and dots, at most 64 characters); a Deflated file inflates past
            ``max_bytes`` (``MAX_SCAN_BYTES``) or its header cannot be read.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:  # a Deflated file is inflated here, within the limit (pydicom's reader has none)
        dataset = pydicom.dcmread(io.BytesIO(inflate(data, max_bytes)), stop_before_pixels=True)
    except ImageDecodeError as exc:
        raise EvidenceError(f"a slice cannot be read: {exc}") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise EvidenceError(f"a slice's header cannot be read ({type(exc).__name__})") from None
    meta = getattr(dataset, "file_meta", None) or Dataset()
    for keyword, in_meta in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not _text(dataset, keyword) and _text(meta, in_meta):
            setattr(dataset, keyword, _text(meta, in_meta))
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(dataset, keyword)
        if not UID_PATTERN.fullmatch(value):
            raise EvidenceError(f"a slice's {keyword} is missing or is not a UID")
        setattr(dataset, keyword, value)
    return dataset


def deidentifying_equipment() -> Any:
    """The Contributing Equipment entry a result made here carries: covidscan, which
    de-identified the patient and study modules it copied."""
    from highdicom import ContributingEquipment
    from pydicom.sr.codedict import codes

    return ContributingEquipment(
        manufacturer="covidscan",
        purpose_of_reference=codes.DCM.DeIdentifyingEquipment,
        software_versions=__version__,
        contribution_description="de-identified the copied patient and study modules",
    )


def build_report(
    evidence: Sequence[Dataset],
    finding: SeriesFinding,
    frames: dict[str, list[int]],
    *,
    series_instance_uid: Optional[str] = None,
    sop_instance_uid: Optional[str] = None,
    series_number: int = RESULTS_SERIES_NUMBER,
) -> bytes:
    """A Comprehensive 3D SR document (Part 10 bytes) about the series of ``evidence``.

    Args:
        evidence: the classified instances' headers (:func:`evidence_header`).
        finding: what the report states.
        frames: for multi-frame instances, the (1-based) frames that were classified.
        series_instance_uid: the results series the report goes in; a new one when None.
        sop_instance_uid: the report's own UID; a new one when None. An export passes the
            same UID on every attempt, so a PACS that got the report once replaces it
            instead of keeping two.
        series_number: the results series' number.
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        CodedConcept,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    covid = CodedConcept("840539006", "SCT", "COVID-19")
    answer = (
        CodedConcept("373066001", "SCT", "Yes")
        if finding.positive
        else CodedConcept("373067005", "SCT", "No")
    )
    probability = Measurement(
        name=CodedConcept("PCOVID", _LOCAL_SCHEME, "Probability of COVID-19"),
        value=round(finding.probability_covid, 6),
        unit=codes.UCUM.NoUnits,
    )
    algorithm = AlgorithmIdentification(
        name=f"covidscan {finding.model_name}",
        version=finding.model_version,
        parameters=[
            f"sha256={finding.model_sha256}",
            f"preprocessing={finding.preprocessing}",
            f"series rule={finding.rule}",
            "research use only",
        ],
    )
    sources = [
        SourceImageForMeasurementGroup(
            str(d.SOPClassUID), str(d.SOPInstanceUID), frames.get(str(d.SOPInstanceUID)) or None
        )
        for d in evidence
    ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(), identifier="covidscan series result"
        ),
        algorithm_id=algorithm,
        measurements=[probability],
        qualitative_evaluations=[QualitativeEvaluation(covid, answer)],
        source_images=sources,
    )
    report = MeasurementReport(
        observation_context=ObservationContext(),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer="covidscan",
        is_complete=True,
        series_description=RESEARCH_ONLY,
        content_qualification="RESEARCH",
        contributing_equipment=[deidentifying_equipment()],
    )  # patient and study attributes come from the de-identified evidence
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

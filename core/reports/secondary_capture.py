"""A slice's Grad-CAM overlay as a DICOM Secondary Capture Image, by highdicom.

The picture is the one the API serves as a scan's heatmap (the slice as the model saw it,
the map blended over it, a legend on the right, a warning across the top for an untrained
model): RGB, 8 bits, written as it is. It belongs in the study of its slice, references
that slice (Source Image Sequence, and the frame of a multi-frame instance), says how it
was made (Derivation Description) and is marked research use only (Image Comments and
Series Description, as the SR), with Burned In Annotation ``YES`` (the legend and any
warning are in the pixels; nothing of the patient is). Its patient and study attributes
come from the de-identified header of the slice (:func:`core.reports.sr.evidence_header`),
so it carries what the SR carries and no more.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Optional

from core.deidentify import record_method
from core.reports.sr import RESEARCH_ONLY, SeriesFinding, deidentifying_equipment
from covidscan import __version__

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

OVERLAY_SERIES_NUMBER = 9902
# Patient Orientation letters along each patient axis (PS3.3 C.7.6.1.1.1), + and -.
_AXES = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(header: Dataset) -> Optional[tuple[str, str]]:
    """The rows' and columns' directions (``("L", "P")`` for an axial slice seen from the
    feet) from a slice's Image Orientation (Patient): the main axis of each direction
    cosine; None when the header has none (a multi-frame instance keeps it per frame)."""
    try:
        cosines = [float(v) for v in header.get("ImageOrientationPatient") or ()]
    except (TypeError, ValueError):
        return None
    if len(cosines) != 6:
        return None
    letters = []
    for vector in (cosines[:3], cosines[3:]):
        axis = max(range(3), key=lambda i: abs(vector[i]))
        if vector[axis] == 0:
            return None
        letters.append(_AXES[axis][0 if vector[axis] > 0 else 1])
    return letters[0], letters[1]


def overlay_comment(finding: SeriesFinding, slice_probability: Optional[float]) -> str:
    """What the picture is, for Image Comments: research only, the method, the model."""
    shown = "" if slice_probability is None else f" (P(COVID) {slice_probability:.3f})"
    return (
        f"{RESEARCH_ONLY}. Grad-CAM of the slice{shown}, blended over it as the model saw "
        f"it; series P(COVID) {finding.probability_covid:.3f} by {finding.rule}, "
        f"COVID-19: {'yes' if finding.positive else 'no'}. Model {finding.model_name} "
        f"{finding.model_version} sha256={finding.model_sha256} "
        f"preprocessing={finding.preprocessing}."
    )


def build_overlay(
    evidence: Dataset,
    overlay_rgb: np.ndarray,
    finding: SeriesFinding,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = OVERLAY_SERIES_NUMBER,
    frame: Optional[int] = None,
    orientation: Optional[tuple[str, str]] = None,
    slice_probability: Optional[float] = None,
) -> bytes:
    """A Secondary Capture Image (Part 10 bytes, Explicit VR Little Endian) of an overlay.

    Args:
        evidence: the source slice's de-identified header (:func:`evidence_header`); the
            image goes in its study and references it.
        overlay_rgb: ``(rows, columns, 3)`` uint8 RGB.
        finding: the series' finding, named in Image Comments.
        series_instance_uid: the series the image goes in: one of overlays, not the SR's
            (a series' instances share one Modality, and this one's is ``OT``).
        sop_instance_uid: the image's own UID (the same on every export attempt).
        instance_number: its number in the series.
        series_number: the series' number.
        frame: the (1-based) frame of a multi-frame source that the overlay shows.
        orientation: Patient Orientation of rows and columns (:func:`patient_orientation`);
            left empty when unknown.
        slice_probability: the shown slice's P(COVID), named in Image Comments.

    Raises:
        ValueError: ``overlay_rgb`` is not an ``(rows, columns, 3)`` uint8 array.
    """
    import numpy as np
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian

    pixels = np.ascontiguousarray(overlay_rgb)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"an overlay is (rows, columns, 3) uint8, not {pixels.shape} {pixels.dtype}"
        )
    image = SCImage.from_ref_dataset(
        ref_dataset=evidence,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer="covidscan",
        patient_orientation=orientation or ("L", "P"),  # highdicom wants one; emptied below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[deidentifying_equipment()],
        series_description=RESEARCH_ONLY,
        software_versions=__version__,
    )
    if orientation is None:
        image.PatientOrientation = []  # Type 2C: present, empty
    image.BodyPartExamined = "CHEST"  # unpaired: Laterality (Type 2C) is absent
    image.BurnedInAnnotation = "YES"
    image.ImageComments = overlay_comment(finding, slice_probability)
    image.DerivationDescription = (
        f"Grad-CAM heatmap of covidscan {finding.model_name} {finding.model_version} blended "
        f"over the slice, resized as preprocessing {finding.preprocessing} gives it to the "
        "model, with a legend"
    )[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = evidence.SOPClassUID
    source.ReferencedSOPInstanceUID = evidence.SOPInstanceUID
    if frame is not None:
        source.ReferencedFrameNumber = frame
    purpose = Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue, purpose.CodingSchemeDesignator = code.value, code.scheme_designator
    purpose.CodeMeaning = code.meaning
    source.PurposeOfReferenceCodeSequence = [purpose]
    image.SourceImageSequence = [source]
    record_method(image)
    buffer = io.BytesIO()
    image.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

"""What the model was made for, checked from a DICOM header before anything is stored.

The classifier was trained on axial chest CT slices. An instance it was not made for is
skipped with the reason (like another modality), not classified:

- a localizer or scout (``LOCALIZER`` among the ImageType values);
- a slice that is not axial: its normal (row × column direction cosines of
  ImageOrientationPatient, or of a multi-frame image's plane orientation groups) more than
  :data:`AXIAL_TOLERANCE_DEGREES` from the patient's head–foot (z) axis. The tolerance
  takes a gantry tilt (CT gantries tilt up to about 30°) and refuses sagittal, coronal and
  oblique reformats. An image that declares no orientation is kept: PNG and JPEG slices
  declare none either, and a DICOM file without one is not refused for it;
- a slice thicker than ``MAX_SLICE_THICKNESS_MM`` (SliceThickness, or a multi-frame
  image's pixel measures); an image that declares no thickness is kept.

``MIN_SERIES_SLICES`` is the one rule on a whole series: it is applied to the series'
result (:mod:`db.series`), not here. Each job records the rules it was submitted under
(:meth:`IntendedUse.as_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from covidscan.settings import Settings

AXIAL_TOLERANCE_DEGREES = 30.0
LOCALIZER = "LOCALIZER"
_PLANES = ("sagittal", "coronal")  # the patient axis (x, y) a slice's normal is nearest


def slice_normal(orientation: Any) -> Optional[tuple[float, float, float]]:
    """Row × column direction cosines of ImageOrientationPatient (not normalised); None
    when the orientation is missing or is not six numbers."""
    try:
        row = [float(v) for v in orientation[:3]]
        col = [float(v) for v in orientation[3:6]]
    except (TypeError, ValueError, IndexError):
        return None
    if len(row) != 3 or len(col) != 3:
        return None
    return (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )


@dataclass(frozen=True)
class SliceGeometry:
    """What the rules read from one DICOM header: every frame's orientation and thickness."""

    image_type: tuple[str, ...] = ()
    orientations: tuple[Sequence[Any], ...] = ()
    thicknesses: tuple[float, ...] = ()


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, bytes)) else list(value)


def _thickness(value: Any) -> Optional[float]:
    try:
        thickness = float(value)
    except (TypeError, ValueError):
        return None
    return thickness if math.isfinite(thickness) else None


def _groups(dataset: Any) -> Iterable[Any]:
    """The shared functional group, then each frame's (a multi-frame image's)."""
    yield from (dataset.get("SharedFunctionalGroupsSequence") or ())[:1]
    yield from dataset.get("PerFrameFunctionalGroupsSequence") or ()


def read_geometry(dataset: Any) -> SliceGeometry:
    """The image type, orientations and slice thicknesses a parsed header declares (an
    unreadable value counts as not declared)."""
    image_type = tuple(str(v).strip().upper() for v in _values(dataset.get("ImageType")))
    orientations = [dataset.get("ImageOrientationPatient")]
    thicknesses = [_thickness(dataset.get("SliceThickness"))]
    for group in _groups(dataset):
        for plane in (group.get("PlaneOrientationSequence") or ())[:1]:
            orientations.append(plane.get("ImageOrientationPatient"))
        for measures in (group.get("PixelMeasuresSequence") or ())[:1]:
            thicknesses.append(_thickness(measures.get("SliceThickness")))
    return SliceGeometry(
        image_type,
        tuple(o for o in orientations if o is not None),
        tuple(t for t in thicknesses if t is not None),
    )


def _tilt(normal: tuple[float, float, float]) -> Optional[float]:
    """Degrees between a slice's normal and the patient's z axis, to a tenth (headers write
    direction cosines to a few digits: 0.866 is 30°); None when degenerate."""
    length = math.sqrt(sum(c * c for c in normal))
    if length < 1e-6:
        return None
    return round(math.degrees(math.acos(min(1.0, abs(normal[2]) / length))), 1)


@dataclass(frozen=True)
class IntendedUse:
    """The rules in force: slices thicker than ``max_slice_thickness_mm`` and slices whose
    normal is more than ``axial_tolerance_degrees`` from the z axis are skipped, and so are
    localizers; a series of fewer than ``min_series_slices`` gets no series result."""

    max_slice_thickness_mm: float
    min_series_slices: int
    axial_tolerance_degrees: float = AXIAL_TOLERANCE_DEGREES

    @classmethod
    def from_settings(cls, settings: Settings) -> IntendedUse:
        return cls(settings.max_slice_thickness_mm, settings.min_series_slices)

    def as_dict(self) -> dict[str, Any]:
        """The rules as a job records them (and its JSON shows them)."""
        return {
            "skip_localizers": True,
            "axial_tolerance_degrees": self.axial_tolerance_degrees,
            "max_slice_thickness_mm": self.max_slice_thickness_mm,
            "min_series_slices": self.min_series_slices,
        }

    def refusal(self, geometry: SliceGeometry) -> Optional[str]:
        """Why an instance is outside the intended use (the rule and the value; nothing
        else of the header is quoted), or None when the model is made for it."""
        if LOCALIZER in geometry.image_type:
            return (
                "a localizer or scout image (ImageType LOCALIZER) is outside the model's "
                "intended use: axial CT slices"
            )
        for orientation in geometry.orientations:
            normal = slice_normal(orientation)
            tilt = _tilt(normal) if normal is not None else None
            if normal is not None and tilt is not None and tilt > self.axial_tolerance_degrees:
                nearest = max(range(3), key=lambda axis: abs(normal[axis]))
                plane = f"a {_PLANES[nearest]}" if nearest < 2 else "an oblique"
                return (
                    f"{plane} slice (its normal {tilt:g}° from the patient's head-foot "
                    f"axis) is outside the model's intended use: axial slices, within "
                    f"{self.axial_tolerance_degrees:g}°"
                )
        thickest = max(geometry.thicknesses, default=None)
        if thickest is not None and thickest > self.max_slice_thickness_mm:
            return (
                f"slice thickness {thickest:g} mm is above MAX_SLICE_THICKNESS_MM "
                f"({self.max_slice_thickness_mm:g} mm), outside the model's intended use"
            )
        return None

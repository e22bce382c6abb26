"""DICOM series of a job: slices grouped by study and series, ordered along the patient axis,
and the series' P(COVID) made from its slices' by the job's recorded rule.

Rules: ``topNpct-mean`` is the mean of the highest N % of the succeeded slices'
probabilities (at least one slice: ``ceil(N/100 × count)``); ``mean`` and ``max`` are what
they say. The default, ``top10pct-mean``, lets a finding in a few slices show without one
noisy slice deciding alone. The label is the positive class at P ≥ 0.5, as for a slice.

A series of fewer slices than the job's ``min_series_slices`` (``MIN_SERIES_SLICES`` at
submission) gets no result: its P(COVID) and label are None and ``skipped`` says why. Its
slices are classified all the same (each slice's result stands on its own); slices received
count, whatever their state, so the series gets its result once enough have arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from covidscan.series_rule import DEFAULT_RULE, top_percent
from db.models import Scan, ScanStatus


def aggregate(probabilities: Sequence[float], rule: str = DEFAULT_RULE) -> Optional[float]:
    """The series probability from its slices' by ``rule``; None when there is none.

    Raises:
        ValueError: an unknown rule.
    """
    if not probabilities:
        return None
    ranked = sorted(probabilities, reverse=True)
    percent = top_percent(rule)
    if percent is None:
        return ranked[0] if rule == "max" else sum(ranked) / len(ranked)
    count = max(1, math.ceil(percent / 100 * len(ranked)))
    return sum(ranked[:count]) / count


def slice_order(scan: Scan) -> tuple:
    """Along the patient axis: position on the slice normal, else InstanceNumber, then
    the frame and the upload order."""
    position = scan.slice_position
    return (
        position is None,
        position if position is not None else 0.0,
        scan.instance_number if scan.instance_number is not None else 0,
        scan.frame or 0,
        scan.position,
    )


@dataclass
class Series:
    study_uid: Optional[str]
    series_uid: Optional[str]
    modality: Optional[str]
    rule: str
    slices: list[Scan] = field(default_factory=list)
    min_slices: int = 1
    receiving: bool = False  # its job is open: more instances may come
    expected_slices: Optional[int] = None  # the instances its sender said it holds

    @property
    def skipped(self) -> Optional[str]:
        """Why the series gets no result (too few slices), or None."""
        if len(self.slices) >= self.min_slices:
            return None
        return (
            f"the series has {len(self.slices)} slice(s), fewer than the "
            f"{self.min_slices} a series result needs (MIN_SERIES_SLICES when the job "
            "was submitted)"
        )

    @property
    def probabilities(self) -> list[float]:
        return [
            s.probability_covid
            for s in self.slices
            if s.status == ScanStatus.SUCCEEDED and s.probability_covid is not None
        ]

    @property
    def probability_covid(self) -> Optional[float]:
        if self.skipped is not None:
            return None
        return aggregate(self.probabilities, self.rule)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for scan in self.slices:
            found[scan.status.value] = found.get(scan.status.value, 0) + 1
        return found

    def label(self, positive: str, negative: str) -> Optional[str]:
        probability = self.probability_covid
        if probability is None:
            return None
        return positive if probability >= 0.5 else negative

    def as_dict(
        self, positive: str = "COVID", negative: str = "NonCOVID", with_slices: bool = False
    ) -> dict[str, Any]:
        counts = self.counts()
        body: dict[str, Any] = {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "modality": self.modality,
            "slice_count": len(self.slices),
            "succeeded": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
            "pending": counts.get("queued", 0) + counts.get("running", 0),
            "probability_covid": self.probability_covid,
            "label": self.label(positive, negative),
            "rule": self.rule,
            "skipped": self.skipped,
            "receiving": self.receiving,
        }
        if self.expected_slices is not None:
            body["expected_slices"] = self.expected_slices
        if with_slices:
            body["slices"] = [
                {
                    "scan_id": s.id,
                    "instance_number": s.instance_number,
                    "frame": s.frame,
                    "slice_position": s.slice_position,
                    "status": s.status.value,
                    "probability_covid": s.probability_covid,
                }
                for s in self.slices
            ]
        return body


def min_series_slices(intended_use: Optional[dict[str, Any]]) -> int:
    """The fewest slices a series needs for a result under a job's recorded rules (1, no
    limit, for a job from before they were recorded)."""
    return int((intended_use or {}).get("min_series_slices") or 1)


def job_series(
    session: Session,
    job_id: str,
    rule: Optional[str],
    min_slices: int = 1,
    receiving: bool = False,
    expected: Optional[Mapping[str, int]] = None,
) -> list[Series]:
    """The job's DICOM series, each with its slices in order along the patient axis; a
    series of fewer than ``min_slices`` slices gets no result. ``receiving``: the job is
    open (its series may grow); ``expected``: Series Instance UID -> the instances its
    sender holds (:attr:`db.models.Job.series_expected`)."""
    scans = session.scalars(
        select(Scan)
        .where(Scan.job_id == job_id, Scan.series_uid.is_not(None))
        .order_by(Scan.position)
    )
    grouped: dict[tuple, Series] = {}
    for scan in scans:
        key = (scan.study_uid, scan.series_uid)
        if key not in grouped:
            grouped[key] = Series(
                scan.study_uid,
                scan.series_uid,
                scan.modality,
                rule or DEFAULT_RULE,
                min_slices=min_slices,
                receiving=receiving,
                expected_slices=(expected or {}).get(scan.series_uid or ""),
            )
        grouped[key].slices.append(scan)
    for series in grouped.values():
        series.slices.sort(key=slice_order)
    return list(grouped.values())


def find_series(
    session: Session, job_id: str, rule: Optional[str], series_uid: str, min_slices: int = 1
) -> Optional[Series]:
    return next(
        (s for s in job_series(session, job_id, rule, min_slices) if s.series_uid == series_uid),
        None,
    )

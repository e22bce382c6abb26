"""Data functions the workers use: claim scans, then record their results idempotently."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Scan, ScanStatus, utcnow


@dataclass(frozen=True)
class ModelIdentity:
    """Names the model, engine, precision and preprocessing that made a result."""

    name: str
    version: str
    sha256: str
    trained: bool
    engine: str
    precision: str
    preprocessing: str


@dataclass(frozen=True)
class ScanOutcome:
    """The result of one scan: a probability, or an error saying why there is none."""

    scan_id: str
    probability_covid: Optional[float] = None
    label: Optional[str] = None
    error: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.error is None) == (self.probability_covid is None):
            raise ValueError("a scan outcome carries either a probability or an error")


def claim_scans(session: Session, scan_ids: Sequence[str]) -> list[Scan]:
    """Mark the unfinished scans among ``scan_ids`` running and return them in upload order.

    Scans that already have a result (a redelivered task) or no longer exist are left out.
    """
    if not scan_ids:
        return []
    scans = list(session.scalars(
        select(Scan).where(Scan.id.in_(list(scan_ids)),
                           Scan.status.not_in(ScanStatus.terminal()))
        .order_by(Scan.job_id, Scan.position)
    ))
    now = utcnow()
    for scan in scans:
        scan.status = ScanStatus.RUNNING
        if scan.started_at is None:
            scan.started_at = now
    return scans


def record_outcomes(session: Session, outcomes: Sequence[ScanOutcome],
                    model: ModelIdentity, worker: Optional[str] = None) -> int:
    """Write outcomes for scans that have none yet; returns how many rows were written.

    ``worker`` names the worker that produced them (its Celery node name).
    Idempotent: a scan that already succeeded or failed keeps its first result.
    """
    now = utcnow()
    written = 0
    for outcome in outcomes:
        result = session.execute(
            update(Scan)
            .where(Scan.id == outcome.scan_id, Scan.status.not_in(ScanStatus.terminal()))
            .values(
                status=ScanStatus.FAILED if outcome.error else ScanStatus.SUCCEEDED,
                probability_covid=outcome.probability_covid,
                label=outcome.label,
                error=outcome.error,
                model_name=model.name,
                model_version=model.version,
                model_sha256=model.sha256,
                engine=model.engine,
                precision=model.precision,
                preprocessing=model.preprocessing,
                worker=worker,
                finished_at=now,
            )
            .returning(Scan.job_id)
        )
        if result.first() is not None:
            written += 1
    return written

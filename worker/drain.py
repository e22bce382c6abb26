"""The task body: lease waiting scans from SQL a batch at a time and classify them.

A wake-up starts a drain; it claims ``BATCH_SIZE`` scans (highest priority first),
classifies them with each job's pinned model and precision, writes the results under
its lease, and claims again until nothing waits. A worker holds at most
:attr:`worker.runtime.WorkerRuntime.claim_slots` claims at once, so it leases only what it
is about to decode, not everything Redis prefetched for it. Any error while classifying
fails only the scans of that batch, with the reason; a worker that dies leaves leases
that expire (see :mod:`core.sweep`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional

from sqlalchemy.exc import OperationalError

from core.jobs.ending import commit_ending
from db.explanations import release_explanation_leases
from db.identity import ModelIdentity
from db.jobs import job_pins
from db.scans import Lease, ScanOutcome, claim_next, release_leases, write_outcomes
from worker import explain, metrics
from worker.inference import classify_batch
from worker.model_cache import ModelUnavailable, pin_unpinned_jobs

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class DrainReport:
    claimed: int = 0
    written: int = 0
    succeeded: int = 0
    failed: int = 0
    explained: int = 0

    def __add__(self, other: DrainReport) -> DrainReport:
        return DrainReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def drain(runtime: WorkerRuntime, worker: Optional[str] = None) -> DrainReport:
    """Classify waiting scans, then explain waiting explanations, until none is left or the
    worker is stopping. Scans come first: each claim looks for scans before explanations."""
    total = DrainReport()
    with runtime.draining():
        while not runtime.stopping.is_set():
            if not runtime.claim_slots.acquire(timeout=1.0):
                continue
            try:
                leases = claim(runtime)
                if not leases:
                    explained = _explain_next(runtime)
                    if explained is None:
                        break
                    total += DrainReport(explained=explained)
                    continue
                if runtime.stopping.is_set():  # not begun: give them back at once
                    with runtime.session_factory.begin() as session:
                        release_leases(session, runtime.owner, [lease.scan_id for lease in leases])
                    break
                total += classify_leases(runtime, leases, worker)
            finally:
                runtime.claim_slots.release()
    return total


def _explain_next(runtime: WorkerRuntime) -> Optional[int]:
    """Compute one claim of explanations; None when none waits."""
    leases = explain.claim(runtime)
    if not leases:
        return None
    if runtime.stopping.is_set():
        with runtime.session_factory.begin() as session:
            release_explanation_leases(
                session, runtime.owner, [lease.explanation_id for lease in leases]
            )
        return None
    return explain.explain_leases(runtime, leases)


def claim(runtime: WorkerRuntime) -> list[Lease]:
    settings = runtime.settings
    with runtime.session_factory.begin() as session:
        return claim_next(session, runtime.owner, settings.batch_size, settings.lease_seconds)


def classify_leases(
    runtime: WorkerRuntime, leases: Sequence[Lease], worker: Optional[str] = None
) -> DrainReport:
    """Classify leased scans with their jobs' pinned models and write what this lease owns."""
    pin_unpinned_jobs(runtime.session_factory, runtime.models, [lease.scan_id for lease in leases])
    with runtime.session_factory() as session:
        pins = job_pins(session, {lease.job_id for lease in leases})
    groups: dict[tuple[Optional[str], Optional[str]], list[Lease]] = defaultdict(list)
    for lease in leases:
        if lease.job_id in pins:  # a deleted job's scans are gone with it
            groups[pins[lease.job_id]].append(lease)
    report = DrainReport(claimed=len(leases))
    for (model_id, precision), group in groups.items():
        outcomes, identity = _classify_group(runtime, group, model_id, precision)
        written = _write(runtime, outcomes, group, identity, worker)
        failed = sum(1 for o in outcomes if o.error)
        report += DrainReport(0, written, len(outcomes) - failed, failed)
        log.info(
            "batch of %d scans: %d succeeded, %d failed on %s/%s",
            len(group),
            len(group) - failed,
            failed,
            identity.engine,
            identity.precision,
        )
    return report


def _classify_group(
    runtime: WorkerRuntime,
    group: Sequence[Lease],
    model_id: Optional[str],
    precision: Optional[str],
) -> tuple[list[ScanOutcome], ModelIdentity]:
    engine = None
    try:
        engine = runtime.models.engines_for(model_id).get(precision)
        outcomes = classify_batch(
            group,
            runtime.blobs,
            engine,
            runtime.decode_pool,
            runtime.batcher,
            runtime.settings.max_scan_bytes,
        )
        return outcomes, ModelIdentity.of_engine(engine)
    except ModelUnavailable as exc:
        return [ScanOutcome(lease.scan_id, error=str(exc)) for lease in group], exc.identity
    except Exception as exc:
        log.exception("classifying %d scans failed", len(group))
        reason = f"classification failed: {type(exc).__name__}: {exc}"
        identity = (
            ModelIdentity.of_engine(engine) if engine is not None else ModelIdentity.unknown()
        )
        return [ScanOutcome(lease.scan_id, error=reason) for lease in group], identity


def _write(
    runtime: WorkerRuntime,
    outcomes: Sequence[ScanOutcome],
    leases: Sequence[Lease],
    identity: ModelIdentity,
    worker: Optional[str],
) -> int:
    """Write in one transaction, retrying a lost database; the lease holds meanwhile.

    Of two writers finishing one job's last scans, the later sees the earlier's results
    and records the job's end, once (:func:`core.jobs.ending.commit_ending`).
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with metrics.timed(metrics.WRITE), runtime.session_factory() as session:
                written = write_outcomes(session, outcomes, leases, identity, worker, runtime.owner)
                # A job these results end is recorded, with its webhook events, in this
                # transaction.
                commit_ending(
                    session,
                    {lease.job_id for lease in leases},
                    runtime.session_factory,
                    runtime.send_wakeups,
                )
        except OperationalError as exc:
            if attempt == WRITE_ATTEMPTS:
                raise
            log.warning("writing %d results failed (%s); retrying", len(leases), exc)
            time.sleep(attempt)
            continue
        metrics.scans_written(identity, written)
        return len(written)
    return 0

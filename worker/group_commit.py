"""Group commit: the claims and the result writes of many tasks, each in one transaction.

One-slice jobs make one task per scan; a transaction per task would make the database,
not the model, the bottleneck (SQLite serialises writers). Task threads hand their
claim or their outcomes to a :class:`~worker.batching.DynamicBatcher` with no delay:
whatever queues while one transaction runs goes into the next. A task still returns,
and is acknowledged, only after its own results are committed.
"""
from __future__ import annotations

from typing import Optional, Sequence

from sqlalchemy.orm import Session, sessionmaker

from db.scans import ModelIdentity, ScanOutcome, claim_scans, record_outcomes
from worker.batching import DynamicBatcher
from worker.inference import ScanInput

MAX_TASKS_PER_TRANSACTION = 256


class GroupCommit:
    """Claims and result writes of concurrent tasks, merged into shared transactions."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory
        self._claims = DynamicBatcher(self._claim_many, MAX_TASKS_PER_TRANSACTION, 0,
                                      name="claims")
        self._writes = DynamicBatcher(self._record_many, MAX_TASKS_PER_TRANSACTION, 0,
                                      name="writes")

    def start(self) -> "GroupCommit":
        self._claims.start()
        self._writes.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self._claims.stop(timeout)
        self._writes.stop(timeout)

    def claim(self, scan_ids: Sequence[str]) -> list[ScanInput]:
        """:func:`db.scans.claim_scans` for one task, committed with other tasks' claims."""
        return self._claims.submit(None, list(scan_ids)).result()

    def record(self, outcomes: Sequence[ScanOutcome], model: ModelIdentity,
               worker: Optional[str] = None) -> int:
        """:func:`db.scans.record_outcomes` for one task, committed with other tasks' results."""
        return self._writes.submit((model, worker), list(outcomes)).result()

    def _claim_many(self, _key: None, chunks: list[list[str]]) -> list[list[ScanInput]]:
        with self.session_factory.begin() as session:
            claimed = {scan.id: ScanInput(scan.id, scan.blob_key)
                       for scan in claim_scans(session, [i for chunk in chunks for i in chunk])}
        ordered = list(claimed)  # upload order, as claim_scans returns them
        wanted = [set(chunk) for chunk in chunks]
        return [[claimed[i] for i in ordered if i in ids] for ids in wanted]

    def _record_many(self, key: tuple[ModelIdentity, Optional[str]],
                     per_task: list[list[ScanOutcome]]) -> list[int]:
        model, worker = key
        with self.session_factory.begin() as session:
            return [record_outcomes(session, outcomes, model, worker) for outcomes in per_task]

"""The job service: every way in (one request, parts of an open job, the two-step upload,
STOW-RS, C-STORE, a retrieval from a PACS) submits and appends through it, so each gets the
same rules.

A submission or an append, in one transaction: the hourly scan quota is charged, the
owner's lock is taken and ``MAX_ACTIVE_JOBS`` checked again after the insert, the scans
and their wake-ups are written with one audit row; then the wake-ups are sent from the
outbox and the submission is counted. A refusal deletes the files the request stored.
Seal, cancel and delete go through here too, and so does the end of a job they cause.

The service knows no transport: adapters pass who acts (:class:`Actor`) and map the
:mod:`core.errors` it raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.destinations import DestinationError, export_names
from core.errors import Conflict, Malformed, TooLarge
from core.intake.intended_use import IntendedUse
from core.jobs.ending import commit_ending
from core.jobs.storing import discard, scan_keys
from core.metrics import job_submitted, scans_added
from core.quota import ScanQuota, check_active_jobs, confirm_active_jobs
from core.sweep import delete_job
from core.wakeups import WakeupSender
from covidscan.settings import Settings
from db.audit import record
from db.blobs import BlobStore
from db.destinations import get_destination, owner_export_to
from db.explanations import queue_job_explanations
from db.jobs import (
    JobOptions,
    NewScan,
    append_scans,
    cancel_job,
    create_job,
    job_scan_count,
    lock_owner,
    seal_job,
    take_part,
)
from db.models import PRIORITIES, AuditEvent, Job, Model, Scan, priority_rank
from db.outbox import relay
from db.registry import default_model, find_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit row and the owner's limits; ``via`` names the way in
    (``multipart``, ``parts``, ``direct``, ``stow-rs``, ``c-store``, ``retrieval``)."""

    owner: str
    key_id: Optional[str] = None
    via: Optional[str] = None


@dataclass(frozen=True)
class Submission:
    """What a submission asks for besides its scans (checked by the adapter that read it)."""

    name: Optional[str] = None
    model: Optional[str] = None  # ``name`` or ``name:version``; None: the default
    precision: Optional[str] = None
    priority: str = "normal"
    callback_url: Optional[str] = None
    explain: Optional[str] = None
    # NAME[,NAME…] of registered destinations, or "none"; None: the owner's defaults
    export_to: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobService:
    """Submit, append, seal, cancel and delete jobs; one per process, shared by threads."""

    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    quota: ScanQuota
    send_wakeups: WakeupSender

    def check_room(self, session: Session, owner: str, new_job: bool = True) -> None:
        """The cheap checks before an upload is read: scans left this hour and, for a new
        job, room for one more unfinished job. Raises OverQuota or Unavailable."""
        if new_job:
            check_active_jobs(session, owner, self.settings.max_active_jobs)
        self.quota.check_room(owner)

    def resolve_model(self, session: Session, ref: Optional[str]) -> Optional[Model]:
        """The model ``ref`` names, else the default; None when nothing is registered.

        Raises:
            Malformed: no model is registered under ``ref``.
        """
        if ref is None:
            return default_model(session)
        model = find_model(session, ref)
        if model is None:
            raise Malformed(
                f"unknown model {ref!r}; GET /v1/models lists the registered ones", model=ref
            )
        return model

    @staticmethod
    def resolve_destinations(session: Session, export_to: Optional[str]) -> list[str]:
        """The registered destinations ``export_to`` names (``NAME[,NAME…]``), checked.

        Raises:
            Malformed: a name is malformed or no destination is registered under it.
        """
        try:
            names = export_names(export_to)
        except DestinationError as exc:
            raise Malformed(f"export_to: {exc}") from None
        unknown = [name for name in names if get_destination(session, name) is None]
        if unknown:
            raise Malformed(
                f"export_to: no destination is registered as {', '.join(map(repr, unknown))}; "
                "`covidscan destinations list` shows the registered ones"
            )
        return names

    def submit(
        self,
        session: Session,
        actor: Actor,
        job_id: str,
        new_scans: Sequence[NewScan],
        submission: Submission = Submission(),
        open_seconds: int = 0,
        name: Optional[str] = None,
    ) -> Job:
        """Accept a new job whose files are stored (under ``job_id``'s prefix).

        ``open_seconds`` > 0: the job stays open for more parts (it may start with none).
        On any refusal the job's files are deleted, except when the job exists already
        (the request that made it owns them).

        Raises:
            Conflict: the job has started already. OverQuota, Unavailable, Malformed.
        """
        try:
            if session.get(Job, job_id) is not None:
                raise Conflict(f"job {job_id} has already started")
            job = self._insert(session, actor, job_id, new_scans, submission, open_seconds, name)
            session.commit()  # the job, its scans, its wake-ups and its audit row, or none
        except (IntegrityError, Conflict):  # the same job started twice: the first has its files
            session.rollback()
            raise Conflict(f"job {job_id} has already started") from None
        except BaseException:
            session.rollback()
            discard(self.blobs, scan_keys(new_scans), job_id)
            raise
        relay(self.session_factory, self.send_wakeups)
        job_submitted(submission.priority, len(new_scans))
        log.info("job %s: %d scans accepted via %s", job_id, len(new_scans), actor.via)
        return job

    def _insert(
        self,
        session: Session,
        actor: Actor,
        job_id: str,
        new_scans: Sequence[NewScan],
        submission: Submission,
        open_seconds: int,
        name: Optional[str],
    ) -> Job:
        settings = self.settings
        explained = len(new_scans) if submission.explain else 0
        self.quota.charge(actor.owner, len(new_scans), explained)
        model = self.resolve_model(session, submission.model)
        export_to = (
            owner_export_to(session, actor.owner)
            if submission.export_to is None
            else self.resolve_destinations(session, submission.export_to)
        )
        lock_owner(session, actor.owner)
        job = create_job(
            session,
            new_scans,
            job_id,
            JobOptions(
                name=submission.name or name,
                owner=actor.owner,
                requested_model=submission.model,
                model=model,
                priority=priority_rank(submission.priority),
                precision=submission.precision,
                callback_url=submission.callback_url,
                retention_seconds=settings.job_retention,
                chunk_size=settings.batch_size,
                explain=submission.explain,
                series_rule=settings.series_rule if any(s.dicom for s in new_scans) else None,
                intended_use=IntendedUse.from_settings(settings).as_dict(),
                open_seconds=open_seconds,
                export_to=export_to,
            ),
        )
        confirm_active_jobs(session, actor.owner, settings.max_active_jobs)
        if submission.explain:
            queue_job_explanations(session, job, submission.explain)
        detail: dict[str, Any] = {
            "scans": len(new_scans),
            "model": job.model_name and f"{job.model_name}:{job.model_version}",
        }
        if open_seconds:
            detail["open"] = True
        self._audit(session, actor, "job.submit", job_id, detail)
        return job

    def append(
        self,
        session: Session,
        actor: Actor,
        job: Job,
        new_scans: Sequence[NewScan],
        part: bool = False,
        continues: bool = False,
        open_seconds: Optional[int] = None,
    ) -> list[Scan]:
        """Add scans whose files are stored to the caller's existing job.

        ``part``: a part of an open job, which keeps it open ``open_seconds`` more
        (default ``OPEN_JOB_TIMEOUT``) and is refused once it is sealed (the next instance
        of a C-STORE association). Otherwise (STOW-RS ``?job=``) the job must not be
        cancelled. ``continues``: the scans are
        more of the submission that made the job (one association): they count in its
        audit row rather than in one of their own.

        The same limits as a new job's: ``MAX_SCANS_PER_JOB`` over the job's scans, the
        hourly quota, and ``MAX_ACTIVE_JOBS`` after the insert, under the owner's lock (the
        job counts as unfinished once it holds waiting scans, as a new one does: a part
        that makes an idle job busy again is refused when the owner's other unfinished
        jobs are at the limit). On any refusal the scans' files are deleted.

        Raises:
            Conflict: the job was sealed or cancelled. TooLarge, OverQuota, Unavailable.
        """
        try:
            rows = self._append(session, actor, job, new_scans, part, continues, open_seconds)
            session.commit()
        except BaseException:
            session.rollback()
            discard(self.blobs, scan_keys(new_scans))
            raise
        relay(self.session_factory, self.send_wakeups)
        scans_added(PRIORITIES[job.priority], len(new_scans))
        log.info("job %s: %d scans added via %s", job.id, len(new_scans), actor.via)
        return rows

    def _append(
        self,
        session: Session,
        actor: Actor,
        job: Job,
        new_scans: Sequence[NewScan],
        part: bool,
        continues: bool,
        open_seconds: Optional[int] = None,
    ) -> list[Scan]:
        settings = self.settings
        job_id = job.id
        lock_owner(session, actor.owner)
        if part:
            keep = settings.open_job_timeout if open_seconds is None else open_seconds
            if not take_part(session, job_id, keep):  # holds the row
                raise Conflict(
                    f"job {job_id} was sealed or cancelled while this part was "
                    "sent; the part was not kept"
                )
        else:
            session.refresh(job)
            if job.cancelled_at is not None:
                raise Conflict(f"job {job_id} was cancelled; it takes no more scans")
        total = job_scan_count(session, job_id) + len(new_scans)  # appends sent at once
        if total > settings.max_scans_per_job:
            raise TooLarge(
                f"a job holds at most {settings.max_scans_per_job} scans "
                f"(MAX_SCANS_PER_JOB); job {job_id} would hold {total}"
            )
        self.quota.charge(actor.owner, len(new_scans), len(new_scans) if job.explain else 0)
        rows = append_scans(
            session,
            job,
            new_scans,
            settings.batch_size,
            settings.series_rule if any(s.dicom for s in new_scans) else None,
        )
        confirm_active_jobs(session, actor.owner, settings.max_active_jobs)
        if job.explain:
            queue_job_explanations(session, job, job.explain, rows)
        if continues:
            self._count_in_submission(session, job_id, len(new_scans))
        else:
            self._audit(session, actor, "job.add_scans", job_id, {"scans": len(new_scans)})
        return rows

    def seal(self, session: Session, actor: Actor, job: Job) -> bool:
        """Seal an open job (idempotent: False when it was sealed already); the job ends
        now if all its scans have.

        Raises:
            Conflict: the open job holds no scan yet.
        """
        if job.open_until is None:
            return False
        if not job_scan_count(session, job.id):
            raise Conflict(f"job {job.id} holds no scans yet: add some, or delete it")
        seal_job(job)
        self._audit(session, actor, "job.seal", job.id)
        self._commit_ending(session, [job.id])
        log.info("job %s sealed", job.id)
        return True

    def cancel(self, session: Session, actor: Actor, job: Job) -> int:
        """Cancel the job's waiting scans (running ones finish); how many. Idempotent."""
        cancelled = cancel_job(session, job)
        self._audit(session, actor, "job.cancel", job.id, {"cancelled": cancelled})
        self._commit_ending(session, [job.id])
        log.info("job %s: cancel asked, %d waiting scans cancelled", job.id, cancelled)
        return cancelled

    def delete(self, session: Session, actor: Actor, job: Job) -> None:
        """Delete the job, its scans, files and thumbnails; running work is cancelled."""
        job_id = job.id
        cancel_job(session, job)
        self._audit(session, actor, "job.delete", job_id)
        session.commit()
        session.close()
        delete_job(self.session_factory, self.blobs, job_id)
        log.info("job %s deleted", job_id)

    def _commit_ending(self, session: Session, job_ids: Sequence[str]) -> None:
        commit_ending(session, job_ids, self.session_factory, self.send_wakeups)

    @staticmethod
    def _audit(
        session: Session,
        actor: Actor,
        action: str,
        job_id: str,
        detail: Optional[dict[str, Any]] = None,
    ) -> None:
        if actor.via is not None:
            detail = {**(detail or {}), "via": actor.via}
        record(
            session, action, key_id=actor.key_id, owner=actor.owner, job_id=job_id, detail=detail
        )

    @staticmethod
    def _count_in_submission(session: Session, job_id: str, scans: int) -> None:
        event = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.job_id == job_id, AuditEvent.action == "job.submit")
            .order_by(AuditEvent.id)
            .limit(1)
        ).first()
        if event is not None:  # a new dict: the JSON column sees the change
            event.detail = {
                **(event.detail or {}),
                "scans": (event.detail or {}).get("scans", 0) + scans,
            }

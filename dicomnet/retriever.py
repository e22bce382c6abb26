"""The DICOM gateway's retriever: runs the retrievals asked for with ``POST /v1/retrievals``.

A loop in ``covidscan dicom-listen`` looks in SQL every ``RETRIEVE_POLL_INTERVAL`` seconds
(inside ``RETRIEVE_WINDOW`` only), claims one retrieval item from the lease queue
(:data:`db.retrievals.RETRIEVAL_ITEMS`), asks the source for it (a DICOM PACS by C-FIND and
C-GET, :mod:`dicomnet.pacs_source`; a DICOMweb one by QIDO-RS and WADO-RS,
:mod:`dicomnet.dicomweb_source`) and writes its outcome under its lease. An item's
instances are checked as they arrive by the same intake as C-STORE
(:func:`core.intake.iter_scans`), stored, and submitted at the end as one job (one job per
item, owned by the retrieval's owner, ``via: retrieval``) through the job service: the
owner's quota is charged for the whole study at once, so a refusal keeps nothing rather
than half a study. Logs name the retrieval and the item's index, never the accession
number.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional

from core.destinations import DestinationError, credentials_of
from core.errors import IntakeError
from core.jobs.service import Actor, JobService
from core.jobs.storing import discard, scan_keys, store_uploads
from core.metrics import retrieval_item_ended
from core.retrievals import identifier_of
from core.sealing import SealError
from core.webhooks import retry_delay
from covidscan.contract import RetrievalOutcome, ScanStatus
from covidscan.retrieve_window import window_open
from db.destinations import get_destination
from db.jobs import NewScan
from db.models import Destination, DestinationKind, Retrieval, new_id, utcnow
from db.retrievals import BY_ACCESSION, RETRIEVAL_ITEMS, ItemLease, mark_found
from dicomnet.pacs_source import DicomSource, Found, SourceRefused, SourceUnreachable
from dicomnet.receiver import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Refusal,
    checked_instance,
)

if TYPE_CHECKING:
    from dicomnet.dicomweb_source import DicomWebSource

log = logging.getLogger(__name__)

VIA = "retrieval"


@dataclass
class Outcome:
    """What to write of an item when it ends."""

    outcome: RetrievalOutcome
    reason: Optional[str] = None
    retrieved: Optional[int] = None
    job_id: Optional[str] = None
    transient: bool = False  # the PACS could not be reached: worth another attempt

    def values(self) -> dict[str, Any]:
        failed = self.outcome == RetrievalOutcome.FAILED
        return {
            "status": ScanStatus.FAILED if failed else ScanStatus.SUCCEEDED,
            "outcome": self.outcome,
            "error": self.reason,
            "instances_retrieved": self.retrieved,
            "job_id": self.job_id,
            "finished_at": utcnow(),
        }

    def later(self, delay: float) -> dict[str, Any]:
        """Waiting again, not before ``delay`` seconds from now, with the reason."""
        return {
            "status": ScanStatus.QUEUED,
            "outcome": RetrievalOutcome.QUEUED,
            "error": f"{self.reason}; trying again",
            "not_before": utcnow() + timedelta(seconds=delay),
        }


@dataclass
class Collected:
    """The C-STORE sub-operations of one item's C-GET: each instance checked by the intake
    and stored under the item's new job; refused ones counted with the first reason."""

    jobs: JobService
    job_id: str
    new_scans: list[NewScan] = field(default_factory=list)
    stored: int = 0
    refused: int = 0
    first_refusal: Optional[str] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from core.intake import ParsedUpload, UploadLimits

        self.limits = UploadLimits.from_settings(self.jobs.settings)
        self.limits.modalities = ("CT",)
        self.parsed = ParsedUpload()

    def on_store(self, event: Any) -> int:
        """A C-GET sub-operation (pynetdicom C-STORE handler): :meth:`take` its instance."""
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # a dataset pynetdicom cannot encode again
            with self._lock:
                return self._refuse(
                    f"unreadable instance ({type(exc).__name__})", CANNOT_UNDERSTAND
                )
        return self.take(data)

    def take(self, data: bytes) -> int:
        """Check and store one instance (Part 10 bytes); the C-STORE status it earns."""
        from core.intake import scans_of

        with self._lock:
            name = f"retrieved-{self.stored + self.refused + 1}"
            try:
                upload = checked_instance(data, name, self.limits, self.parsed)
            except Refusal as refusal:
                return self._refuse(refusal.reason, refusal.status)
            key = self.jobs.blobs.key_for(self.job_id, self.stored + self.refused)
            try:
                self.new_scans.extend(
                    store_uploads(self.jobs.blobs, [upload], lambda _i: key, scans_of)
                )
            except Exception as exc:  # the blob store: this instance is not kept
                log.warning("job %s: a retrieved instance not stored: %s", self.job_id, exc)
                return self._refuse("the blob store refused it", OUT_OF_RESOURCES)
            self.stored += 1
            return SUCCESS

    def _refuse(self, reason: str, status: int) -> int:
        self.refused += 1
        self.first_refusal = self.first_refusal or reason
        return status


class Retriever:
    """Claims retrieval items one at a time and runs them; one per gateway process."""

    def __init__(self, jobs: JobService, ae_title: str = "COVIDSCAN") -> None:
        self.jobs = jobs
        self.settings = jobs.settings
        self.session_factory = jobs.session_factory
        self.ae_title = ae_title
        self.name = f"retriever-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._next_expiry = 0.0

    def run_once(self) -> bool:
        """Expire dead gateways' leases (every ``SWEEP_INTERVAL``), then claim and run one
        item if the window is open; whether an item ran."""
        with self.session_factory() as session:
            if time.monotonic() >= self._next_expiry:  # a write: not at every poll
                RETRIEVAL_ITEMS.expire(session, self.settings.max_attempts)
                session.commit()
                self._next_expiry = time.monotonic() + self.settings.sweep_interval
            if not window_open(self.settings.retrieve_window):
                return False
            leases = RETRIEVAL_ITEMS.claim(session, self.name, 1, self.settings.lease_seconds)
            session.commit()
        if not leases:
            return False
        self.run(leases[0])
        return True

    def run(self, lease: ItemLease) -> None:
        """Retrieve one item and write its outcome (only while this gateway holds it)."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            outcome = self._retrieve(lease)
        except Exception:
            log.exception(
                "retrieval %s item %d: unexpected error", lease.retrieval_id, lease.position
            )
            outcome = Outcome(
                RetrievalOutcome.FAILED, "covidscan failed on this item (see its logs)"
            )
        finally:
            stop.set()
            beat.join()
        again = outcome.transient and lease.attempt < self.settings.max_attempts
        delay = 0.0
        if again:
            delay = retry_delay(lease.attempt, self.settings.retrieve_retry_base)
            values = outcome.later(delay)
        else:
            values = outcome.values()
        with self.session_factory() as session:
            written = RETRIEVAL_ITEMS.finish(session, self.name, lease.id, lease.attempt, values)
            session.commit()
        if written and not again:
            retrieval_item_ended(outcome.outcome.value, outcome.retrieved or 0)
        log.info(
            "retrieval %s item %d: %s%s%s",
            lease.retrieval_id,
            lease.position,
            f"attempt {lease.attempt} did not reach the PACS, tried again in {delay:.0f} s"
            if again
            else outcome.outcome.value,
            f", job {outcome.job_id}" if outcome.job_id else "",
            "" if written else " (lease lost: not written)",
        )

    def _heartbeat(self, stop: threading.Event) -> None:
        every = max(self.settings.lease_seconds / 3, 0.5)
        while not stop.wait(every):
            try:
                with self.session_factory() as session:
                    RETRIEVAL_ITEMS.renew(session, self.name, self.settings.lease_seconds)
                    session.commit()
            except Exception as exc:  # the next beat tries again; the lease says the rest
                log.warning("retrieval lease not renewed: %s", exc)

    def _retrieve(self, lease: ItemLease) -> Outcome:
        with self.session_factory() as session:
            retrieval = session.get(Retrieval, lease.retrieval_id)
            if retrieval is None:  # deleted meanwhile
                return Outcome(RetrievalOutcome.FAILED, "the retrieval was deleted")
            name = retrieval.source
            destination = get_destination(session, name)
            owner, key_id, by = retrieval.owner, retrieval.key_id, retrieval.by
            try:
                identifier = identifier_of(retrieval, lease.position, self.settings.phi_key)
            except SealError as exc:
                return Outcome(RetrievalOutcome.FAILED, str(exc))
        if destination is None:
            return Outcome(RetrievalOutcome.FAILED, f"the source {name!r} is no longer registered")
        try:
            source = self._source(destination)
        except DestinationError as exc:
            return Outcome(RetrievalOutcome.FAILED, str(exc))
        actor = Actor(owner, key_id, VIA)
        try:
            found = source.find(by == BY_ACCESSION, identifier)
            if not found.study_uids:
                return Outcome(RetrievalOutcome.NOT_FOUND, "no study matches")
            if not found.series:
                return Outcome(RetrievalOutcome.NOT_FOUND, "the study holds no CT series")
            with self.session_factory() as session:
                mark_found(session, self.name, lease, found.study_uids, found.instances)
                session.commit()
                self.jobs.check_room(session, owner)  # before anything is fetched
            return self._get(source, found, actor, lease)
        except SourceRefused as exc:
            return Outcome(RetrievalOutcome.REFUSED, str(exc))
        except SourceUnreachable as exc:
            return Outcome(RetrievalOutcome.FAILED, str(exc), transient=True)
        except IntakeError as exc:  # the owner's quota or active jobs: nothing was fetched
            return Outcome(RetrievalOutcome.REFUSED, exc.detail, retrieved=0)

    def _source(self, destination: Destination) -> DicomSource | DicomWebSource:
        """How to reach ``destination``: DICOM (C-FIND, C-GET) or DICOMweb (QIDO-RS,
        WADO-RS, with its credentials opened with PHI_KEY).

        Raises:
            DestinationError: its credentials cannot be opened.
        """
        if destination.kind == DestinationKind.DICOMWEB:
            from dicomnet.dicomweb_source import DicomWebSource

            credentials = credentials_of(destination, self.settings.phi_key)
            return DicomWebSource(str(destination.url), credentials)
        return DicomSource(
            str(destination.host),
            int(destination.port or 0),
            str(destination.ae_title),
            calling=self.ae_title,
            tls=destination.tls,
        )

    def _get(
        self, source: DicomSource | DicomWebSource, found: Found, actor: Actor, lease: ItemLease
    ) -> Outcome:
        collected = Collected(self.jobs, new_id())
        try:
            warning = source.get(found, collected)
        except BaseException:
            discard(self.jobs.blobs, scan_keys(collected.new_scans), collected.job_id)
            raise
        if not collected.new_scans:
            discard(self.jobs.blobs, [], collected.job_id)
            reason = collected.first_refusal or warning or "the PACS sent no instance"
            return Outcome(RetrievalOutcome.REFUSED, f"no instance kept: {reason}", retrieved=0)
        try:
            with self.session_factory() as session:
                self.jobs.submit(
                    session,
                    actor,
                    collected.job_id,
                    collected.new_scans,
                    name=f"retrieval {lease.retrieval_id} #{lease.position}",
                )
        except IntakeError as exc:  # the quota, MAX_ACTIVE_JOBS, MAX_SCANS_PER_JOB: all discarded
            return Outcome(RetrievalOutcome.REFUSED, exc.detail, retrieved=0)
        notes = [
            note
            for note in (
                collected.refused
                and f"{collected.refused} instances refused: {collected.first_refusal}",
                warning,
            )
            if note
        ]
        return Outcome(
            RetrievalOutcome.RETRIEVED,
            "; ".join(notes) or None,
            retrieved=collected.stored,
            job_id=collected.job_id,
        )


def start_retriever(jobs: JobService, ae_title: str) -> Callable[[], None]:
    """Run a :class:`Retriever` in a background thread; returns the function that stops it
    (the item being retrieved is finished first)."""
    retriever = Retriever(jobs, ae_title)
    stop = threading.Event()
    interval = jobs.settings.retrieve_poll_interval

    def loop() -> None:
        while not stop.is_set():
            try:
                ran = retriever.run_once()
            except Exception:
                log.exception("retriever: the lease queue could not be read")
                ran = False
            if not ran:
                stop.wait(interval)

    thread = threading.Thread(target=loop, name="retriever", daemon=True)
    thread.start()
    log.info(
        "retriever %s polling every %d s%s",
        retriever.name,
        interval,
        f" within {jobs.settings.retrieve_window}" if jobs.settings.retrieve_window else "",
    )

    def halt() -> None:
        stop.set()
        thread.join(timeout=120)

    return halt

"""The C-STORE handlers behind ``covidscan dicom-listen``: one job per association.

Every instance goes through the same header checks as ``POST /v1/jobs`` and the same job
service (:mod:`core.jobs.service`): the owner's hourly scan quota, ``MAX_ACTIVE_JOBS`` and
``MAX_SCANS_PER_JOB``, one audit row per association (``via: c-store``, counting its scans)
and the submission metrics. One that passes is stored, written to SQL with a wake-up, and
only then acknowledged (status 0x0000), so what a PACS was told is stored is in a job.
Non-images and other modalities are refused with 0x0122 (SOP class not supported); an
instance over a limit or the quota with 0xA700 (out of resources); an unreadable one with
0xC000.

The job stays open while its association lasts and after: it is sealed once its series
are complete (see :class:`StoreReceiver`). A second association carrying more of the same
series makes a job of its own.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

from core.errors import Conflict
from core.jobs.service import Actor, JobService, Submission
from core.jobs.storing import discard, store_uploads
from db.models import utcnow

log = logging.getLogger(__name__)

SUCCESS, NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xC000
VIA, JOB_NAME = "c-store", "DICOM C-STORE"
DEFAULT_AE_TITLE = "COVIDSCAN"


def dicom_status(error: Exception) -> int:
    """The C-STORE status of a refusal by the core: over a limit or a quota 0xA700, a kind
    not taken 0x0122, anything else (a malformed instance) 0xC000."""
    from core.errors import OverQuota, TooLarge, Unavailable, Unsupported

    if isinstance(error, (TooLarge, OverQuota, Unavailable)):
        return OUT_OF_RESOURCES
    if isinstance(error, Unsupported):
        return NOT_SUPPORTED
    return CANNOT_UNDERSTAND


class Refusal(Exception):
    """A received instance refused by the intake: the C-STORE status it earns and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def checked_instance(data: bytes, name: str, limits: Any, parsed: Any) -> Any:
    """One received instance (Part 10 bytes) through the intake's checks
    (:func:`core.intake.iter_scans`, counting against ``parsed``): its upload.

    Raises:
        Refusal: over a limit, unreadable (the intake's error), or skipped (another
            modality, not an image: 0x0122).
    """
    from core.errors import IntakeError
    from core.intake import iter_scans

    skipped_before = len(parsed.skipped)
    try:
        uploads = list(iter_scans([(name, io.BytesIO(data))], limits, parsed))
    except IntakeError as exc:
        raise Refusal(dicom_status(exc), exc.detail) from None
    if len(parsed.skipped) > skipped_before or not uploads or not uploads[0].dicom:
        why = parsed.skipped[-1].reason if len(parsed.skipped) > skipped_before else None
        raise Refusal(NOT_SUPPORTED, why or "not an image this service takes")
    return uploads[0]


def peer_of(assoc: Any) -> tuple[str, str]:
    """(AE title, host) of the association's other end: the requestor of one we accepted,
    the acceptor of one we requested (a C-GET's sub-operations come over the latter)."""
    peer = assoc.acceptor if getattr(assoc, "is_requestor", False) else assoc.requestor
    title = peer.ae_title
    title = title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)
    try:
        host = str(peer.address)
    except (ValueError, AttributeError):  # no address known (a stand-in association)
        host = "?"
    return title.strip(), host


def peer_name(assoc: Any) -> str:
    """``AE@host`` of the association's other end, for the log."""
    title, host = peer_of(assoc)
    return f"{title}@{host}"


@dataclass
class _SeriesSeen:
    """A series received over one association: its study, and the instances stored."""

    study_uid: Optional[str]
    instances: int = 0


@dataclass
class _Association:
    job_id: str
    calling_ae: str  # the peer's AE title (the called one, for an association we requested)
    host: str
    parsed: Any  # core.intake.ParsedUpload: counts against the per-job limits
    stored: int = 0
    refused: int = 0
    files: int = 0  # files stored under the job's keys, kept or not: each gets its own
    created: bool = False
    series: dict[str, _SeriesSeen] = field(default_factory=dict)  # by Series Instance UID
    last_instance: Optional[datetime] = None


@dataclass
class StoreReceiver:
    """The C-STORE and release handlers; one job per association, submitted to the job
    service with the first instance and added to with each next one (one audit row per
    association, counting its scans).

    The job is open while instances arrive and after: it is sealed (and its series get
    their results) only once its series are complete, by count when the sender is a
    registered DICOM destination that answers C-FIND (``NumberOfSeriesRelatedInstances``
    equal to the instances received), else ``SERIES_STABLE_SECONDS`` after the last
    instance, by the sweep. The handlers fit any association, one we accepted or one we
    requested (a C-GET's C-STORE sub-operations).
    """

    jobs: JobService
    owner: str
    modalities: tuple[str, ...] = ("CT",)
    export_to: Optional[str] = None  # NAME[,NAME…]: every job's results go there
    return_to_sender: bool = False  # a sender registered as a destination gets results too
    ae_title: str = DEFAULT_AE_TITLE  # ours, the calling AE title of the C-FIND to a sender
    _associations: dict[int, _Association] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _finishing: list[threading.Thread] = field(default_factory=list)

    @property
    def hold_seconds(self) -> int:
        """How long the job stays open after each instance while its association lasts:
        the association cannot stay idle longer than ``DICOM_TIMEOUT`` (then it is
        aborted), and the series is not stable before ``SERIES_STABLE_SECONDS``."""
        settings = self.jobs.settings
        return settings.series_stable_seconds + settings.dicom_timeout

    def _association(self, event) -> _Association:
        from core.intake import ParsedUpload
        from db.models import new_id

        with self._lock:
            key = id(event.assoc)
            if key not in self._associations:
                calling, host = peer_of(event.assoc)
                self._associations[key] = _Association(new_id(), calling, host, ParsedUpload())
            return self._associations[key]

    def on_store(self, event) -> int:
        """Check, store and record one instance; the status answers the C-STORE."""
        from core.errors import IntakeError
        from core.intake import UploadLimits

        state = self._association(event)
        data = event.encoded_dataset()
        limits = UploadLimits.from_settings(self.jobs.settings)
        limits.modalities = self.modalities
        name = f"c-store-{state.stored + state.refused + 1}"
        try:
            upload = checked_instance(data, name, limits, state.parsed)
        except Refusal as refusal:
            return self._refused(state, refusal.status, refusal.reason)
        try:
            self._record(state, upload)
        except IntakeError as exc:  # the quota, MAX_ACTIVE_JOBS, MAX_SCANS_PER_JOB, Redis
            log.warning(
                "job %s: instance from %s refused for owner %s: %s",
                state.job_id,
                state.calling_ae,
                self.owner,
                exc.detail,
            )
            return self._refused(state, dicom_status(exc), exc.detail, logged=True)
        state.stored += 1
        first_frame = upload.dicom[0]
        if first_frame.series_uid:
            seen = state.series.setdefault(
                first_frame.series_uid, _SeriesSeen(first_frame.study_uid)
            )
            seen.instances += 1  # not frames: NumberOfSeriesRelatedInstances counts instances
        state.last_instance = utcnow()
        log.debug("job %s: C-STORE from %s stored (0x0000)", state.job_id, state.calling_ae)
        return SUCCESS

    def _refused(self, state: _Association, status: int, why: str, logged: bool = False) -> int:
        state.refused += 1
        if not logged:
            log.info(
                "job %s: C-STORE from %s@%s refused with status 0x%04X: %s",
                state.job_id,
                state.calling_ae,
                state.host,
                status,
                why,
            )
        return status

    def _record(self, state: _Association, upload) -> None:
        from core.intake import scans_of
        from db.models import Job

        blobs = self.jobs.blobs
        key = blobs.key_for(state.job_id, state.files)
        state.files += 1
        new_scans = store_uploads(blobs, [upload], lambda _i: key, scans_of)
        caller = Actor(self.owner, None, VIA)
        with self.jobs.session_factory() as session:
            if not state.created:
                submission = Submission(export_to=self._export_to(session, state.calling_ae))
                self.jobs.submit(
                    session,
                    caller,
                    state.job_id,
                    new_scans,
                    submission,
                    open_seconds=self.hold_seconds,
                    name=JOB_NAME,
                )
                state.created = True
                return
            job = session.get(Job, state.job_id)
            if job is None:
                discard(blobs, [key])
                raise Conflict(f"job {state.job_id} was deleted during its association")
            self.jobs.append(
                session,
                caller,
                job,
                new_scans,
                part=True,
                continues=True,
                open_seconds=self.hold_seconds,
            )

    def _export_to(self, session, calling_ae: str) -> Optional[str]:
        """The job's destinations: ``--export-to``'s, and with ``--return-to-sender`` the
        destination registered with the calling AE title."""
        from db.destinations import destination_for_ae

        names = [n.strip() for n in (self.export_to or "").split(",") if n.strip()]
        if self.return_to_sender:
            sender = destination_for_ae(session, calling_ae)
            if sender is not None:
                names.append(sender.name)
        return ",".join(dict.fromkeys(names)) or None

    def on_release(self, event) -> None:
        """The association ended (released or aborted): the job stays open until its
        series are stable; once released, a sender registered as a DICOM destination is
        asked (C-FIND, in a thread) how many instances each series holds, and the job is
        sealed at once when all arrived."""
        from pynetdicom import evt

        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        aborted = event.event is evt.EVT_ABORTED
        if state is None:
            log.info(
                "association from %s %s: no instance sent",
                peer_name(event.assoc),
                "aborted" if aborted else "released",
            )
            return
        log.info(
            "association from %s@%s %s: %d instance(s) stored, %d refused%s",
            state.calling_ae,
            state.host,
            "aborted" if aborted else "released",
            state.stored,
            state.refused,
            f", job {state.job_id}" if state.created else "",
        )
        if not state.created:
            return
        self._wait_until_stable(state)
        if aborted or not state.series:
            return
        worker = threading.Thread(
            target=self._seal_if_complete, args=(state,), name=f"series-{state.job_id}"
        )
        with self._lock:
            self._finishing = [t for t in self._finishing if t.is_alive()] + [worker]
        worker.start()

    def _wait_until_stable(self, state: _Association) -> None:
        from db.jobs import keep_open_until

        settings = self.jobs.settings
        until = (state.last_instance or utcnow()) + timedelta(
            seconds=settings.series_stable_seconds
        )
        with self.jobs.session_factory.begin() as session:
            if keep_open_until(session, state.job_id, until):
                log.info(
                    "job %s: open until %s (SERIES_STABLE_SECONDS=%d after the last instance)",
                    state.job_id,
                    until.isoformat(timespec="seconds"),
                    settings.series_stable_seconds,
                )

    def _seal_if_complete(self, state: _Association) -> None:
        from db.destinations import destination_for_ae
        from db.models import Job
        from dicomnet.completeness import series_sizes

        try:
            with self.jobs.session_factory() as session:
                sender = destination_for_ae(session, state.calling_ae)
                if sender is None or not sender.host or not sender.port:
                    return
                address = (str(sender.host), int(sender.port), str(sender.ae_title), sender.tls)
            host, port, called, tls = address
            sizes = series_sizes(
                host,
                port,
                called,
                {uid: seen.study_uid for uid, seen in state.series.items()},
                calling_ae=self.ae_title,
                timeout=float(self.jobs.settings.dicom_timeout),
                tls=tls,
            )
            received = {uid: seen.instances for uid, seen in state.series.items()}
            complete = all(sizes.get(uid) == count for uid, count in received.items())
            with self.jobs.session_factory() as session:
                job = session.get(Job, state.job_id)
                if job is None:
                    return
                if sizes:
                    job.series_expected = {**(job.series_expected or {}), **sizes}
                if complete and job.open_until is not None:
                    self.jobs.seal(session, Actor(self.owner, None, VIA), job)
                    log.info(
                        "job %s: every series complete by C-FIND to %s (%s); sealed",
                        state.job_id,
                        called,
                        ", ".join(f"{received[u]}/{sizes[u]}" for u in received),
                    )
                else:
                    session.commit()
                    log.info(
                        "job %s: series not known complete by C-FIND to %s (received/held: "
                        "%s); sealed once stable",
                        state.job_id,
                        called,
                        ", ".join(f"{received[u]}/{sizes.get(u, '?')}" for u in received),
                    )
        except Exception:  # the timer still seals the job
            log.exception("job %s: series completeness by C-FIND failed", state.job_id)

    def wait_finished(self, timeout: float = 60) -> None:
        """Wait for the completeness checks under way (at shutdown, and in tests)."""
        with self._lock:
            pending = list(self._finishing)
        for thread in pending:
            thread.join(timeout)

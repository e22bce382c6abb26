"""``covidscan dicom-listen``: a DICOM C-STORE receiver (pynetdicom) so a PACS can push studies.

Each association becomes one job, owned by ``--owner``. Every instance goes through the
same header checks as ``POST /v1/jobs`` and the same job service (:mod:`core.jobs.service`):
the owner's hourly scan quota, ``MAX_ACTIVE_JOBS`` and ``MAX_SCANS_PER_JOB``, one audit row
per association (``via: c-store``, counting its scans) and the submission metrics. One that
passes is stored, written to SQL with a wake-up, and only then acknowledged (status
0x0000), so what a PACS was told is stored is in a job. Non-images and other modalities
are refused with 0x0122 (SOP class not supported); an instance over a limit or the quota
with 0xA700 (out of resources); an unreadable one with 0xC000. With
``DICOM_ALLOWED_AE_TITLES`` set, an association from any other calling AE title is
rejected before any instance is sent.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Optional

import click

from core.errors import Conflict
from core.jobs.service import Actor, JobService, Submission
from core.jobs.storing import discard, store_uploads
from covidscan.settings import Settings
from db.models import utcnow
from dicomnet.commitment import STORAGE_COMMITMENT
from dicomnet.probe import VERIFICATION

log = logging.getLogger(__name__)

SUCCESS, NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xC000
VIA, JOB_NAME = "c-store", "DICOM C-STORE"
DEFAULT_HOST, DEFAULT_AE_TITLE = "127.0.0.1", "COVIDSCAN"
DEFAULT_PORT: int = Settings.model_fields["dicom_port"].default  # DICOM_PORT's


def supported_contexts() -> list[tuple[str, tuple[str, ...]]]:
    """The presentation contexts the listener accepts, as (abstract syntax, transfer
    syntaxes): Verification, Storage Commitment Push Model (for a PACS's reports, see
    :data:`ROLES`), and every storage SOP class pynetdicom knows in every transfer
    syntax the pipeline decodes (so a PACS that cannot transcode, a JPEG 2000 archive,
    can still push). The conformance statement is made from the same list."""
    from pynetdicom import AllStoragePresentationContexts
    from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES

    from covidscan.dicom_syntaxes import DECODED_TRANSFER_SYNTAXES

    contexts = [
        (VERIFICATION, tuple(DEFAULT_TRANSFER_SYNTAXES)),
        (STORAGE_COMMITMENT, tuple(DEFAULT_TRANSFER_SYNTAXES)),
    ]
    for context in AllStoragePresentationContexts:
        contexts.append((str(context.abstract_syntax), DECODED_TRANSFER_SYNTAXES))
    return contexts


ROLES = {STORAGE_COMMITMENT: (False, True)}
"""SCP/SCU role selection accepted per abstract syntax, as (scu_role, scp_role) of the
requestor: a PACS sends its Storage Commitment report (N-EVENT-REPORT) over an
association it opens to us, proposing itself as the SCP of the SOP class and us as its
SCU (PS3.4 J.3.3)."""


def application_entity(
    ae_title: str,
    allowed_ae_titles: tuple[str, ...] = (),
    *,
    max_associations: Optional[int] = None,
    timeout: Optional[float] = None,
) -> Any:
    """The listener's pynetdicom AE (not started): its contexts and roles, with
    ``allowed_ae_titles`` only those calling AE titles accepted (empty: any caller), at
    most ``max_associations`` at once (default ``DICOM_MAX_ASSOCIATIONS``'s), each step
    waiting at most ``timeout`` seconds (default ``DICOM_TIMEOUT``'s)."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for abstract_syntax, transfer_syntaxes in supported_contexts():
        scu_role, scp_role = ROLES.get(abstract_syntax, (None, None))
        ae.add_supported_context(
            abstract_syntax, list(transfer_syntaxes), scu_role=scu_role, scp_role=scp_role
        )
    ae.require_calling_aet = list(allowed_ae_titles)
    ae.maximum_associations = max_associations or default_of("dicom_max_associations")
    wait = float(timeout or default_of("dicom_timeout"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = wait
    return ae


def default_of(name: str) -> Any:
    """A setting's default (for an AE built without settings: the conformance statement)."""
    return Settings.model_fields[name].default


def dicom_status(error: Exception) -> int:
    """The C-STORE status of a refusal by the core: over a limit or a quota 0xA700, a kind
    not taken 0x0122, anything else (a malformed instance) 0xC000."""
    from core.errors import OverQuota, TooLarge, Unavailable, Unsupported

    if isinstance(error, (TooLarge, OverQuota, Unavailable)):
        return OUT_OF_RESOURCES
    if isinstance(error, Unsupported):
        return NOT_SUPPORTED
    return CANNOT_UNDERSTAND


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
class _Association:
    job_id: str
    calling_ae: str
    host: str
    parsed: Any  # core.intake.ParsedUpload: counts against the per-job limits
    stored: int = 0
    refused: int = 0
    files: int = 0  # files stored under the job's keys, kept or not: each gets its own
    created: bool = False
    # Series Instance UID -> [Study Instance UID, instances stored]
    series: dict[str, list[Any]] = field(default_factory=dict)
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
        from core.intake import UploadLimits, iter_scans

        state = self._association(event)
        data = event.encoded_dataset()
        limits = UploadLimits.from_settings(self.jobs.settings)
        limits.modalities = self.modalities
        skipped_before = len(state.parsed.skipped)
        name = f"c-store-{state.stored + state.refused + 1}"
        try:
            uploads = list(iter_scans([(name, io.BytesIO(data))], limits, state.parsed))
        except IntakeError as exc:
            return self._refused(state, dicom_status(exc), exc.detail)
        if len(state.parsed.skipped) > skipped_before or not uploads or not uploads[0].dicom:
            why = (
                state.parsed.skipped[-1].reason
                if len(state.parsed.skipped) > skipped_before
                else None
            )
            return self._refused(state, NOT_SUPPORTED, why or "not an image this service takes")
        try:
            self._record(state, uploads[0])
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
        first_frame = uploads[0].dicom[0]
        if first_frame.series_uid:
            entry = state.series.setdefault(first_frame.series_uid, [first_frame.study_uid, 0])
            entry[1] += 1  # instances, not frames: NumberOfSeriesRelatedInstances counts those
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
        if state is None:
            return
        aborted = event.event is evt.EVT_ABORTED
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
                {uid: entry[0] for uid, entry in state.series.items()},
                calling_ae=self.ae_title,
                timeout=float(self.jobs.settings.dicom_timeout),
                tls=tls,
            )
            received = {uid: entry[1] for uid, entry in state.series.items()}
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


def job_service(settings: Settings, session_factory: Any, send_wakeups: Any) -> JobService:
    """The job service the receiver submits to: the settings' blob store and the hourly
    quota in their Redis, as the API has them."""
    from core.quota import ScanQuota
    from db.blobs import open_blob_store

    return JobService(
        settings,
        session_factory,
        open_blob_store(settings.blob_dir, settings.blob_store),
        ScanQuota.open(settings.redis_url, settings.scans_per_hour),
        send_wakeups,
    )


def association_logger(settings: Settings) -> Callable[[Any], None]:
    """The EVT_ACCEPTED / EVT_REJECTED handler: each association logged in DICOM terms,
    a rejection with its reason and the setting behind it."""
    from pynetdicom import evt

    def on_association(event: Any) -> None:
        assoc = event.assoc
        called = str(assoc.acceptor.ae_title).strip()
        if event.event is evt.EVT_ACCEPTED:
            log.info(
                "association from %s to %s accepted (%d presentation context(s))",
                peer_name(assoc),
                called,
                len(assoc.accepted_contexts),
            )
            return
        answer = assoc.acceptor.primitive
        reason = answer.reason_str if answer is not None else "no reason given"
        why = {
            "Calling AE title not recognised": " (not in DICOM_ALLOWED_AE_TITLES)",
            "Local limit exceeded": (
                f" (DICOM_MAX_ASSOCIATIONS={settings.dicom_max_associations} associations are open)"
            ),
        }.get(reason, "")
        log.warning(
            "association from %s to %s rejected: %s%s",
            peer_name(assoc),
            called,
            reason,
            why,
        )

    return on_association


def start(
    settings: Settings,
    host: str,
    port: int,
    ae_title: str,
    owner: str,
    modalities: tuple[str, ...],
    *,
    export_to: Optional[str] = None,
    return_to_sender: bool = False,
) -> tuple[Any, Callable[[], None]]:
    """Start the receiver in background threads: the pynetdicom server and a function
    that stops it and closes what it opened."""
    from pynetdicom import evt
    from pynetdicom.events import EventHandlerType

    from core.wakeups import WakeupSender
    from db.session import make_engine, make_session_factory
    from dicomnet.commitment import report_handler

    engine = make_engine(settings.database_url)
    session_factory = make_session_factory(engine)
    send_wakeups = WakeupSender(settings.redis_url)
    receiver = StoreReceiver(
        job_service(settings, session_factory, send_wakeups),
        owner,
        modalities,
        export_to=export_to,
        return_to_sender=return_to_sender,
        ae_title=ae_title,
    )
    ae = application_entity(
        ae_title,
        settings.dicom_allowed_ae_titles,
        max_associations=settings.dicom_max_associations,
        timeout=settings.dicom_timeout,
    )
    logged = association_logger(settings)
    handlers: list[EventHandlerType] = [
        (evt.EVT_ACCEPTED, logged),
        (evt.EVT_REJECTED, logged),
        (evt.EVT_C_STORE, receiver.on_store),
        (evt.EVT_RELEASED, receiver.on_release),
        (evt.EVT_ABORTED, receiver.on_release),
        (evt.EVT_N_EVENT_REPORT, report_handler(session_factory, peer_name)),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    assert server is not None, "a non-blocking start returns its server"
    log.info(
        "DICOM listener %s on %s:%d for owner %s: C-STORE from %s; at most %d associations, "
        "timeouts %d s; results to %s",
        ae_title,
        host,
        port,
        owner,
        ", ".join(settings.dicom_allowed_ae_titles) or "any calling AE",
        settings.dicom_max_associations,
        settings.dicom_timeout,
        ", ".join(
            filter(None, [export_to, "the sender when registered" if return_to_sender else ""])
        )
        or "no destination",
    )

    def stop() -> None:
        server.shutdown()
        receiver.wait_finished(settings.dicom_timeout * 2)
        send_wakeups.close()
        engine.dispose()

    return server, stop


def serve(
    settings: Settings,
    host: str,
    port: int,
    ae_title: str,
    owner: str,
    modalities: tuple[str, ...],
    ready: Optional[threading.Event] = None,
    *,
    export_to: Optional[str] = None,
    return_to_sender: bool = False,
) -> None:
    """Run the receiver until interrupted."""
    _server, stop = start(
        settings,
        host,
        port,
        ae_title,
        owner,
        modalities,
        export_to=export_to,
        return_to_sender=return_to_sender,
    )
    try:
        (ready or threading.Event()).set()
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


@click.command("dicom-listen")
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on (0.0.0.0 for every interface).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--ae-title", default=DEFAULT_AE_TITLE, show_default=True, help="The AE title a PACS sends to."
)
@click.option(
    "--owner", required=True, help="The owner of the jobs received (whose keys can read them)."
)
@click.option(
    "--allow-modality",
    metavar="MODALITIES",
    default="",
    help="DICOM modalities to classify besides CT, e.g. MR,PT.",
)
@click.option(
    "--export-to",
    metavar="NAME[,NAME…]",
    default="",
    help="Registered destinations every received job's results are sent to.",
)
@click.option(
    "--return-to-sender",
    is_flag=True,
    help="Also send results to the sender, when its calling AE title is a registered "
    "DICOM destination's.",
)
def dicom_listen(
    host: str,
    port: int,
    ae_title: str,
    owner: str,
    allow_modality: str,
    export_to: str,
    return_to_sender: bool,
) -> None:
    """Receive studies pushed by C-STORE; each association becomes one job, sealed once
    its series are complete. Also takes a PACS's Storage Commitment reports.

    Talks to DATABASE_URL, REDIS_URL and BLOB_DIR directly, like the workers.
    """
    from core import metrics
    from core.errors import Malformed
    from covidscan.settings import ConfigError, load_settings
    from db import migrate
    from db.session import make_engine, make_session_factory

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not 1 <= len(ae_title.strip()) <= 16:
        raise click.BadParameter("an AE title has 1 to 16 characters", param_hint="--ae-title")
    extra = [m.strip().upper() for m in allow_modality.split(",") if m.strip()]
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            names = JobService.resolve_destinations(session, export_to or None)
    except Malformed as exc:
        raise click.BadParameter(
            exc.detail.removeprefix("export_to: "), param_hint="--export-to"
        ) from None
    finally:
        engine.dispose()
    metrics.serve(settings, "C-STORE receiver")
    click.echo(f"receiving C-STORE as {ae_title.strip()} on {host}:{port}; Ctrl-C stops", nl=True)
    serve(
        settings,
        host,
        port,
        ae_title.strip(),
        owner,
        tuple(dict.fromkeys(["CT", *extra])),
        export_to=",".join(names) or None,
        return_to_sender=return_to_sender,
    )

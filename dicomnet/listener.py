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
from typing import Any, Optional

import click

from core.errors import Conflict
from core.jobs.service import Actor, JobService
from core.jobs.storing import discard, store_uploads
from covidscan.settings import Settings
from dicomnet.probe import VERIFICATION

log = logging.getLogger(__name__)

SUCCESS, NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xC000
VIA, JOB_NAME = "c-store", "DICOM C-STORE"
DEFAULT_HOST, DEFAULT_PORT, DEFAULT_AE_TITLE = "127.0.0.1", 11112, "COVIDSCAN"


def supported_contexts() -> list[tuple[str, tuple[str, ...]]]:
    """The presentation contexts the listener accepts, as (abstract syntax, transfer
    syntaxes): Verification, and every storage SOP class pynetdicom knows in every transfer
    syntax the pipeline decodes (so a PACS that cannot transcode, a JPEG 2000 archive,
    can still push). The conformance statement is made from the same list."""
    from pynetdicom import AllStoragePresentationContexts
    from pynetdicom.presentation import DEFAULT_TRANSFER_SYNTAXES

    from covidscan.dicom_syntaxes import DECODED_TRANSFER_SYNTAXES

    contexts = [(VERIFICATION, tuple(DEFAULT_TRANSFER_SYNTAXES))]
    for context in AllStoragePresentationContexts:
        contexts.append((str(context.abstract_syntax), DECODED_TRANSFER_SYNTAXES))
    return contexts


def application_entity(ae_title: str, allowed_ae_titles: tuple[str, ...] = ()) -> Any:
    """The listener's pynetdicom AE (not started): its contexts, and with
    ``allowed_ae_titles`` only those calling AE titles accepted (empty: any caller)."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for abstract_syntax, transfer_syntaxes in supported_contexts():
        ae.add_supported_context(abstract_syntax, list(transfer_syntaxes))
    ae.require_calling_aet = list(allowed_ae_titles)
    return ae


def dicom_status(error: Exception) -> int:
    """The C-STORE status of a refusal by the core: over a limit or a quota 0xA700, a kind
    not taken 0x0122, anything else (a malformed instance) 0xC000."""
    from core.errors import OverQuota, TooLarge, Unavailable, Unsupported

    if isinstance(error, (TooLarge, OverQuota, Unavailable)):
        return OUT_OF_RESOURCES
    if isinstance(error, Unsupported):
        return NOT_SUPPORTED
    return CANNOT_UNDERSTAND


@dataclass
class _Association:
    job_id: str
    calling_ae: str
    parsed: Any  # core.intake.ParsedUpload: counts against the per-job limits
    stored: int = 0
    refused: int = 0
    files: int = 0  # files stored under the job's keys, kept or not: each gets its own
    created: bool = False


@dataclass
class StoreReceiver:
    """The C-STORE and release handlers; one job per association, submitted to the job
    service with the first instance and added to with each next one (one audit row per
    association, counting its scans)."""

    jobs: JobService
    owner: str
    modalities: tuple[str, ...] = ("CT",)
    _associations: dict[int, _Association] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _association(self, event) -> _Association:
        from core.intake import ParsedUpload
        from db.models import new_id

        with self._lock:
            key = id(event.assoc)
            if key not in self._associations:
                calling = event.assoc.requestor.ae_title
                calling = (
                    calling.decode("ascii", "replace")
                    if isinstance(calling, bytes)
                    else str(calling)
                )
                self._associations[key] = _Association(new_id(), calling.strip(), ParsedUpload())
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
            state.refused += 1
            log.info("job %s: instance refused: %s", state.job_id, exc.detail)
            return dicom_status(exc)
        if len(state.parsed.skipped) > skipped_before or not uploads or not uploads[0].dicom:
            state.refused += 1
            return NOT_SUPPORTED
        try:
            self._record(state, uploads[0])
        except IntakeError as exc:  # the quota, MAX_ACTIVE_JOBS, MAX_SCANS_PER_JOB, Redis
            state.refused += 1
            log.warning(
                "job %s: instance from %s refused for owner %s: %s",
                state.job_id,
                state.calling_ae,
                self.owner,
                exc.detail,
            )
            return dicom_status(exc)
        state.stored += 1
        return SUCCESS

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
                self.jobs.submit(session, caller, state.job_id, new_scans, name=JOB_NAME)
                state.created = True
                return
            job = session.get(Job, state.job_id)
            if job is None:
                discard(blobs, [key])
                raise Conflict(f"job {state.job_id} was deleted during its association")
            self.jobs.append(session, caller, job, new_scans, continues=True)

    def on_release(self, event) -> None:
        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        if state is not None:
            log.info(
                "job %s: association from %s ended, %d instances stored, %d refused",
                state.job_id,
                state.calling_ae,
                state.stored,
                state.refused,
            )


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


def start(
    settings: Settings, host: str, port: int, ae_title: str, owner: str, modalities: tuple[str, ...]
) -> tuple[Any, Callable[[], None]]:
    """Start the receiver in background threads: the pynetdicom server and a function
    that stops it and closes what it opened."""
    from pynetdicom import evt
    from pynetdicom.events import EventHandlerType

    from core.wakeups import WakeupSender
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    send_wakeups = WakeupSender(settings.redis_url)
    receiver = StoreReceiver(
        job_service(settings, make_session_factory(engine), send_wakeups), owner, modalities
    )
    ae = application_entity(ae_title, settings.dicom_allowed_ae_titles)
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, receiver.on_store),
        (evt.EVT_RELEASED, receiver.on_release),
        (evt.EVT_ABORTED, receiver.on_release),
    ]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    assert server is not None, "a non-blocking start returns its server"
    # The gateway also pulls the studies asked for with POST /v1/retrievals.
    from dicomnet.retriever import start_retriever

    stop_retriever = start_retriever(receiver.jobs, ae_title)
    log.info(
        "C-STORE receiver %s listening on %s:%d for owner %s, from %s",
        ae_title,
        host,
        port,
        owner,
        ", ".join(settings.dicom_allowed_ae_titles) or "any calling AE",
    )

    def stop() -> None:
        stop_retriever()
        server.shutdown()
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
) -> None:
    """Run the receiver until interrupted."""
    _server, stop = start(settings, host, port, ae_title, owner, modalities)
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
def dicom_listen(host: str, port: int, ae_title: str, owner: str, allow_modality: str) -> None:
    """Receive studies pushed by C-STORE; each association becomes one job.

    Talks to DATABASE_URL, REDIS_URL and BLOB_DIR directly, like the workers.
    """
    from core import metrics
    from covidscan.settings import ConfigError, load_settings
    from db import migrate

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not 1 <= len(ae_title.strip()) <= 16:
        raise click.BadParameter("an AE title has 1 to 16 characters", param_hint="--ae-title")
    extra = [m.strip().upper() for m in allow_modality.split(",") if m.strip()]
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    migrate.upgrade(settings.database_url)
    metrics.serve(settings, "C-STORE receiver")
    click.echo(f"receiving C-STORE as {ae_title.strip()} on {host}:{port}; Ctrl-C stops", nl=True)
    serve(settings, host, port, ae_title.strip(), owner, tuple(dict.fromkeys(["CT", *extra])))

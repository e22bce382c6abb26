"""``covidscan dicom-listen``: a DICOM C-STORE receiver (pynetdicom) so a PACS can push studies.

Each association becomes one job, owned by ``--owner``. Every instance goes through the
same header checks and limits as ``POST /v1/jobs``; one that passes is stored, written to
SQL with a wake-up, and only then acknowledged (status 0x0000), so what a PACS was told is
stored is in a job. Non-images and other modalities are refused with 0x0122 (SOP class not
supported); an instance over a limit with 0xA700 (out of resources); an unreadable one
with 0xC000.
"""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import click

from covidscan.settings import Settings

log = logging.getLogger(__name__)

SUCCESS, NOT_SUPPORTED, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xC000


def dicom_status(error: Exception) -> int:
    """The C-STORE status of a refusal by the core: over a limit or a quota 0xA700, a kind
    not taken 0x0122, anything else (a malformed instance) 0xC000."""
    from core.errors import OverQuota, TooLarge, Unsupported

    if isinstance(error, (TooLarge, OverQuota)):
        return OUT_OF_RESOURCES
    if isinstance(error, Unsupported):
        return NOT_SUPPORTED
    return CANNOT_UNDERSTAND


@dataclass
class _Association:
    job_id: str
    parsed: Any  # core.intake.ParsedUpload: counts against the per-job limits
    stored: int = 0
    refused: int = 0
    created: bool = False


@dataclass
class StoreReceiver:
    """The C-STORE and release handlers; one job per association."""

    settings: Settings
    session_factory: Any
    blobs: Any
    send_wakeups: Any
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
                self._associations[key] = _Association(new_id(), ParsedUpload())
            return self._associations[key]

    def on_store(self, event) -> int:
        """Check, store and record one instance; the status answers the C-STORE."""
        from core.errors import IntakeError
        from core.intake import UploadLimits, iter_scans

        state = self._association(event)
        data = event.encoded_dataset()
        limits = UploadLimits.from_settings(self.settings)
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
        self._record(state, uploads[0])
        state.stored += 1
        return SUCCESS

    def _record(self, state: _Association, upload) -> None:
        from core.intake import scans_of
        from db.jobs import JobOptions, append_scans, create_job, next_position
        from db.models import Job
        from db.outbox import relay

        settings = self.settings
        with self.session_factory.begin() as session:
            position = next_position(session, state.job_id)
            key = self.blobs.key_for(state.job_id, position)
            self.blobs.put(key, upload.data)
            scans = scans_of(upload, key)
            if not state.created:
                create_job(session, scans, state.job_id, JobOptions(
                    name="DICOM C-STORE", owner=self.owner,
                    retention_seconds=settings.job_retention, chunk_size=settings.batch_size,
                    series_rule=settings.series_rule, model=_default_model(session)))
            else:
                append_scans(session, session.get(Job, state.job_id), scans, settings.batch_size)
        state.created = True
        relay(self.session_factory, self.send_wakeups)

    def on_release(self, event) -> None:
        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        if state is not None:
            log.info("job %s: association ended, %d instances stored, %d refused",
                     state.job_id, state.stored, state.refused)


def _default_model(session):
    from db.registry import default_model

    return default_model(session)


def serve(settings: Settings, host: str, port: int, ae_title: str, owner: str,
          modalities: tuple[str, ...], ready: Optional[threading.Event] = None) -> None:
    """Run the receiver until interrupted."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    from covidscan.dicom_syntaxes import DECODED_TRANSFER_SYNTAXES

    from core.wakeups import WakeupSender
    from db.blobs import open_blob_store
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)
    receiver = StoreReceiver(settings, make_session_factory(engine), blobs,
                             WakeupSender(settings.redis_url), owner, modalities)
    ae = AE(ae_title=ae_title)
    # A PACS administrator's first step is "test this modality" (C-ECHO); every storage SOP
    # class is offered in every transfer syntax the pipeline decodes, so a PACS that cannot
    # transcode (JPEG 2000 archives) can still push.
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, DECODED_TRANSFER_SYNTAXES)
    handlers = [(evt.EVT_C_STORE, receiver.on_store), (evt.EVT_RELEASED, receiver.on_release),
                (evt.EVT_ABORTED, receiver.on_release)]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    log.info("C-STORE receiver %s listening on %s:%d for owner %s", ae_title, host, port, owner)
    try:
        (ready or threading.Event()).set()
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        engine.dispose()



@click.command("dicom-listen")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=11112, show_default=True)
@click.option("--ae-title", default="COVIDSCAN", show_default=True,
              help="The AE title a PACS sends to.")
@click.option("--owner", required=True,
              help="The owner of the jobs received (whose keys can read them).")
@click.option("--allow-modality", metavar="MODALITIES", default="",
              help="DICOM modalities to classify besides CT, e.g. MR,PT.")
def dicom_listen(host: str, port: int, ae_title: str, owner: str, allow_modality: str) -> None:
    """Receive studies pushed by C-STORE; each association becomes one job.

    Talks to DATABASE_URL, REDIS_URL and BLOB_DIR directly, like the workers.
    """
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
    click.echo(f"receiving C-STORE as {ae_title.strip()} on {host}:{port}; Ctrl-C stops",
               nl=True)
    serve(settings, host, port, ae_title.strip(), owner, tuple(dict.fromkeys(["CT", *extra])))

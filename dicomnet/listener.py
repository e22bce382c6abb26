"""``covidscan dicom-listen``: the DICOM gateway (pynetdicom) a PACS pushes studies to.

It accepts Verification (C-ECHO), every storage SOP class in every transfer syntax the
pipeline decodes, and a PACS's Storage Commitment reports; each association becomes one
job, owned by ``--owner``, through the handlers of :mod:`dicomnet.receiver`. With
``DICOM_ALLOWED_AE_TITLES`` set, an association from any other calling AE title is
rejected before any instance is sent; at most ``DICOM_MAX_ASSOCIATIONS`` are served at
once, each step bounded by ``DICOM_TIMEOUT``. Associations, refusals and reports are
logged in DICOM terms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Optional

import click

from core.jobs.service import JobService
from covidscan.settings import Settings
from dicomnet.commitment import STORAGE_COMMITMENT
from dicomnet.probe import VERIFICATION
from dicomnet.receiver import (
    CANNOT_UNDERSTAND,
    DEFAULT_AE_TITLE,
    NOT_SUPPORTED,
    OUT_OF_RESOURCES,
    SUCCESS,
    StoreReceiver,
    dicom_status,
    peer_name,
)

__all__ = [
    "SUCCESS",
    "NOT_SUPPORTED",
    "OUT_OF_RESOURCES",
    "CANNOT_UNDERSTAND",
    "StoreReceiver",
    "dicom_status",
    "supported_contexts",
    "application_entity",
    "job_service",
    "start",
    "serve",
    "dicom_listen",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
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
    """Start the receiver in background threads: the pynetdicom server (and the exporter
    that sends due results to PACS destinations) and a function that stops them and
    closes what they opened."""
    from pynetdicom import evt
    from pynetdicom.events import EventHandlerType

    from core.wakeups import WakeupSender
    from db.session import make_engine, make_session_factory
    from dicomnet.commitment import report_handler
    from dicomnet.exporter import Exporter

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
    # The gateway also sends results to PACS destinations, as this AE title.
    exporter = Exporter(settings, session_factory, receiver.jobs.blobs, ae_title)
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
    exporter.start()
    # The gateway also pulls the studies asked for with POST /v1/retrievals.
    from dicomnet.retriever import start_retriever

    stop_retriever = start_retriever(receiver.jobs, ae_title)
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
        exporter.stop()
        stop_retriever()
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

"""Send results to PACS destinations: a C-STORE SCU (with Storage Commitment) and a STOW-RS
client, and the loop of ``covidscan dicom-listen`` that sends what is due.

What the destination answers decides what happens next (:func:`store_outcome`,
:func:`stow_outcome`): accepted (success or a warning) is ``stored``; a refusal that may
pass (out of resources, an abort, a timeout, a refused connection, HTTP 429 or 5xx) is
tried again later; a refusal meant for good (SOP class not supported, not authorised,
data set does not match, cannot understand, a permanent association rejection, HTTP 4xx,
409) fails at once with the destination's reason. The SOP Instance UID is the same on
every attempt. Logs and errors speak DICOM (or HTTP), never of the patient.
"""

from __future__ import annotations

import io
import json
import logging
import ssl
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Optional

import requests
from sqlalchemy.orm import Session, sessionmaker

from core.exports import FAILED, RETRY, STORED, Delivery, Target, export_due
from core.webhooks import parse_retry_after
from covidscan.settings import Settings
from db.blobs import BlobStore
from db.models import Export
from dicomnet.commitment import (
    NO_ANSWER,
    STORAGE_COMMITMENT,
    request_commitment,
    requested_context,
)
from dicomnet.probe import _connect_failure

log = logging.getLogger(__name__)

DEFAULT_AE_TITLE = "COVIDSCAN"
STORE_WARNINGS = {0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}
STORE_TRANSIENT = {0x0110, 0x0213}  # processing failure, resource limitation
HTTP_RETRIED = {408, 429}
FAILURE_REASON, FAILED_SOP_SEQUENCE = "00081197", "00081198"


def status_meaning(code: int) -> str:
    """A C-STORE status in PS3.4's words, e.g. ``Refused: Out of Resources``."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("Failure", "unknown status"))
    return meaning or category.lower()


def store_outcome(code: int) -> str:
    """What a C-STORE status means for the export: stored, retry or failed.

    Success and warnings are stored; out of resources (0xA7xx) and a processing failure
    are tried again; anything else (0x0122 SOP class not supported, 0x0124 not
    authorised, 0xA9xx data set does not match SOP class, 0xCxxx cannot understand, …)
    fails at once: sending the same instance again would be refused again.
    """
    if code == 0x0000 or code in STORE_WARNINGS:
        return STORED
    if 0xA700 <= code <= 0xA7FF or code in STORE_TRANSIENT:
        return RETRY
    return FAILED


def stow_outcome(status: int) -> str:
    """What a STOW-RS answer's HTTP status means for the export (before its body is read)."""
    if status == 200:
        return STORED
    if status in HTTP_RETRIED or 500 <= status <= 599:
        return RETRY
    return FAILED


def request_commitment_of(
    assoc: Any, transaction_uid: str, sop_class: str, sop_instance: str, called: str
) -> tuple[Optional[str], str]:
    """Ask for Storage Commitment of the instance just stored, on the same association: the
    transaction UID when the PACS took the request, and what happened, in DICOM terms."""
    if not any(cx.abstract_syntax == STORAGE_COMMITMENT for cx in assoc.accepted_contexts):
        return None, f"{called} does not offer Storage Commitment (Push Model)"
    code = request_commitment(assoc, transaction_uid, [(sop_class, sop_instance)])
    if code == NO_ANSWER:
        return None, f"no answer to the Storage Commitment N-ACTION from {called}"
    if code != 0x0000:
        return None, f"Storage Commitment N-ACTION refused by {called}: 0x{code:04X}"
    return transaction_uid, "Storage Commitment requested"


def c_store(
    target: Target,
    instance: bytes,
    timeout: float,
    calling_ae_title: str = DEFAULT_AE_TITLE,
    transaction_uid: Optional[str] = None,
) -> Delivery:
    """Send ``instance`` by C-STORE to a DICOM destination, then, when it is asked for and
    the PACS offers it, request its Storage Commitment on the same association under
    ``transaction_uid`` (kept in the export's row before: the report may come at once)."""
    import pydicom
    from pynetdicom import AE

    host, port, called_ae = str(target.host), int(target.port or 0), str(target.ae_title)
    called = f"{called_ae}@{host}:{port}"
    context = ssl.create_default_context() if target.tls else None
    failure = _connect_failure(host, port, timeout, context)
    if failure:
        return Delivery(RETRY, f"C-STORE to {called} not attempted: {failure}")
    dataset = pydicom.dcmread(io.BytesIO(instance))
    sop_class = str(dataset.SOPClassUID)
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(sop_class, [str(dataset.file_meta.TransferSyntaxUID)])
    if target.commitment:
        ae.requested_contexts = [*ae.requested_contexts, requested_context()]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    tls_args = (context, host) if context is not None else None
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        return Delivery(RETRY, f"cannot open an association with {called}: {exc}")
    try:
        if assoc.is_rejected:
            answer = assoc.acceptor.primitive
            permanent = answer is not None and answer.result == 0x01
            reason = (
                f"{answer.reason_str} ({answer.result_str}, by the {answer.source_str})"
                if answer is not None
                else "no reason given"
            )
            return Delivery(
                FAILED if permanent else RETRY, f"association rejected by {called}: {reason}"
            )
        if not assoc.is_established:
            return Delivery(RETRY, f"association with {called} aborted before it was accepted")
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            return Delivery(
                FAILED,
                f"C-STORE refused by {called}: no presentation context accepted for "
                f"{dataset.SOPClassUID.name} ({sop_class})",
            )
        status = assoc.send_c_store(dataset)
        code = getattr(status, "Status", None)
        if code is None:
            return Delivery(
                RETRY, f"C-STORE to {called}: no answer within {timeout:g} s (association aborted)"
            )
        outcome = store_outcome(code)
        said = f"0x{code:04X} {status_meaning(code)}"
        if outcome != STORED:
            return Delivery(outcome, f"C-STORE refused by {called}: {said}")
        detail = f"C-STORE to {called} stored ({said})"
        if not target.commitment or not transaction_uid:
            return Delivery(STORED, detail)
        requested, commitment = request_commitment_of(
            assoc, transaction_uid, sop_class, str(dataset.SOPInstanceUID), called
        )
        return Delivery(
            STORED,
            f"{detail}; {commitment}",
            transaction_uid=requested,
            note=None if requested else f"stored, not committed: {commitment}",
        )
    finally:
        if assoc.is_established:
            assoc.release()


def _failure_reasons(body: bytes) -> list[str]:
    """The FailureReason codes of a STOW-RS answer's Failed SOP Sequence, as ``0xNNNN``."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return []
    if isinstance(answer, list):
        answer = answer[0] if answer else {}
    items = (answer.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or []
    reasons = []
    for item in items:
        values = (item.get(FAILURE_REASON) or {}).get("Value") or []
        reasons += [f"0x{int(value):04X} {status_meaning(int(value))}" for value in values]
    return reasons


def stow(target: Target, instance: bytes, timeout: float) -> Delivery:
    """POST ``instance`` to ``{url}/studies`` (STOW-RS) with the destination's credentials."""
    url = f"{str(target.url).rstrip('/')}/studies"
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + instance
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    auth = None
    credentials = target.credentials
    if credentials is not None and credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    elif credentials is not None and credentials.basic:
        auth = credentials.basic
    try:
        response = requests.post(
            url, data=body, headers=headers, auth=auth, timeout=timeout, allow_redirects=False
        )
    except requests.exceptions.Timeout:
        return Delivery(RETRY, f"STOW-RS to {url}: no answer within {timeout:g} s")
    except requests.exceptions.RequestException as exc:
        return Delivery(RETRY, f"STOW-RS to {url} failed: {type(exc).__name__}")
    code = response.status_code
    reasons = _failure_reasons(response.content)
    if code == 202 and not reasons:  # accepted with warnings only (e.g. coerced elements)
        return Delivery(STORED, f"STOW-RS to {url} stored (HTTP 202, with warnings)")
    outcome = FAILED if code == 202 else stow_outcome(code)
    said = f"HTTP {code} {response.reason or ''}".strip()
    if reasons:
        said += f", FailureReason {', '.join(reasons)}"
    if outcome == STORED:
        return Delivery(STORED, f"STOW-RS to {url} stored ({said})")
    return Delivery(
        outcome,
        f"STOW-RS refused by {url}: {said}",
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


class Sender:
    """Sends an export's instance the way its destination is reached."""

    def __init__(self, settings: Settings, calling_ae_title: str = DEFAULT_AE_TITLE) -> None:
        self.timeout = float(settings.export_timeout)
        self.calling_ae_title = calling_ae_title

    def __call__(self, target: Target, instance: bytes, export: Export) -> Delivery:
        if target.kind == "dicom":
            return c_store(
                target, instance, self.timeout, self.calling_ae_title, export.transaction_uid
            )
        return stow(target, instance, self.timeout)


def send_due(
    settings: Settings,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    calling_ae_title: str = DEFAULT_AE_TITLE,
    limit: int = 10,
) -> dict[str, str]:
    """One pass over the due exports (a loop you can run by hand and in tests)."""
    return export_due(session_factory, blobs, settings, Sender(settings, calling_ae_title), limit)


class Exporter:
    """A thread that sends due exports every ``EXPORT_POLL_SECONDS`` until stopped."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        blobs: BlobStore,
        calling_ae_title: str = DEFAULT_AE_TITLE,
        limit: int = 10,
    ) -> None:
        self.settings, self.session_factory, self.blobs = settings, session_factory, blobs
        self.calling_ae_title, self.limit = calling_ae_title, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="covidscan-exporter", daemon=True)

    def start(self) -> Exporter:
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop after the attempt in flight (bounded by ``EXPORT_TIMEOUT`` per step)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        import core.reports.series  # noqa: F401  (highdicom: loaded once, before the first export)

        while not self._stop.is_set():
            done: Sequence[str] = ()
            try:
                done = list(
                    send_due(
                        self.settings,
                        self.session_factory,
                        self.blobs,
                        self.calling_ae_title,
                        self.limit,
                    )
                )
            except Exception:  # the loop must outlive a database or PACS outage
                log.exception("sending due exports failed; trying again")
            if len(done) < self.limit:  # a full pass: more may be due at once
                self._stop.wait(self.settings.export_poll_seconds)

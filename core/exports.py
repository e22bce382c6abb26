"""Deliver results to PACS destinations: build each export's instance, send it, record it.

:func:`export_due` is one pass of the sender: it claims due exports (:data:`db.exports.EXPORTS`)
under a lease, builds each one's instance (:func:`export_instance`: the series' SR with the
UIDs fixed in its row, its original patient and study attributes put back from their
sealed copy), hands it to a :data:`Send` (the DICOM network adapter's C-STORE SCU or
STOW-RS client, :mod:`dicomnet.exporter`) and records what the destination answered: a
:class:`Delivery` whose outcome is ``stored``, ``retry`` (tried again after
:func:`core.webhooks.retry_delay`, honouring a Retry-After, until ``EXPORT_RETRY_WINDOW``
after the row was made, then failed with the last reason) or ``failed`` (the destination
refused for good). Without the sealed patient attributes (``PHI_KEY`` unset at intake) an
export fails: an SR without its patient module would be filed by the PACS under nobody.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from core.destinations import Credentials, DestinationError, credentials_of
from core.errors import IntakeError
from core.metrics import count_export
from core.patient import PATIENT_KEYWORDS, open_patient
from core.sealing import SealError
from core.webhooks import next_attempt
from covidscan.contract import ExportKind, ExportState
from covidscan.settings import Settings
from db.blobs import BlobStore
from db.destinations import get_destination
from db.exports import (
    claim_due_exports,
    explanations_waiting,
    new_uid,
    note_missing_commitments,
    record_attempt,
)
from db.models import Destination, DestinationKind, Export, Job, utcnow
from db.session import in_transaction

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

STORED, RETRY, FAILED = "stored", "retry", "failed"
DEIDENTIFYING_EQUIPMENT = ("109104", "DCM")  # PS3.16 CID 7005: De-identifying Equipment
ADDED_BY_DEIDENTIFICATION = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)


@dataclass(frozen=True)
class Delivery:
    """What one attempt at a destination came to, in the destination's terms.

    ``outcome``: ``stored`` (accepted), ``retry`` (the destination may take it later: out
    of resources, busy, unreachable) or ``failed`` (refused for good). ``detail`` says
    what happened in DICOM or HTTP terms; ``transaction_uid`` names the Storage Commitment
    request made after a stored C-STORE, if one was (``note`` says why not, when it was
    asked for and could not be made).
    """

    outcome: str
    detail: str
    retry_after: Optional[float] = None
    transaction_uid: Optional[str] = None
    note: Optional[str] = None  # a stored instance's caveat: why no commitment was asked


@dataclass(frozen=True)
class Target:
    """A destination as the sender needs it, read in the claim's transaction."""

    name: str
    kind: str
    ae_title: Optional[str]
    host: Optional[str]
    port: Optional[int]
    tls: bool
    commitment: bool
    url: Optional[str]
    credentials: Optional[Credentials]

    @classmethod
    def of(cls, row: Destination, credentials: Optional[Credentials]) -> Target:
        return cls(
            row.name,
            row.kind.value,
            row.ae_title,
            row.host,
            row.port,
            bool(row.tls),
            bool(row.commitment),
            row.url,
            credentials,
        )


Send = Callable[[Target, bytes, Export], Delivery]
"""Sends one instance (Part 10 bytes) to a destination; never raises for a network failure."""


class NotExportable(Exception):
    """The export's instance cannot be made; the message says why (no patient data)."""


def with_patient(document: bytes, patient: Dataset) -> bytes:
    """``document`` (Part 10) with the original patient and study attributes put back:
    what was kept replaces what de-identification left; what it added that the original
    lacks (Patient Identity Removed, the method, the de-identifying equipment) goes."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(document))
    for keyword in PATIENT_KEYWORDS:
        if keyword == "SpecificCharacterSet":
            continue  # the document's own (UTF-8) encodes whatever the original held
        if keyword in patient:
            dataset[keyword] = patient[keyword]
        elif keyword in ADDED_BY_DEIDENTIFICATION and keyword in dataset:
            del dataset[keyword]
    if "DeidentificationMethodCodeSequence" not in patient:
        kept = [
            item
            for item in dataset.get("ContributingEquipmentSequence", [])
            if not any(
                (code.CodeValue, code.CodingSchemeDesignator) == DEIDENTIFYING_EQUIPMENT
                for code in item.get("PurposeOfReferenceCodeSequence", [])
            )
        ]
        if kept:
            dataset.ContributingEquipmentSequence = kept
        elif "ContributingEquipmentSequence" in dataset:
            del dataset.ContributingEquipmentSequence
    dataset.SpecificCharacterSet = "ISO_IR 192"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class NotYet(Exception):
    """The export's instance cannot be made yet (its Grad-CAM explanations are being made)."""


def _document(
    session: Session, blobs: BlobStore, settings: Settings, job: Job, export: Export
) -> bytes:
    """The de-identified instance of the export's kind, with the row's UIDs."""
    from core.reports.series import series_document, series_overlays

    if export.kind != ExportKind.OVERLAY:
        return series_document(
            session,
            blobs,
            settings.max_scan_bytes,
            job,
            export.series_uid,
            sop_instance_uid=export.sop_instance_uid,
            series_instance_uid=export.results_series_uid,
        )
    overlays = series_overlays(
        session,
        blobs,
        settings.max_scan_bytes,
        job,
        export.series_uid,
        series_instance_uid=export.results_series_uid,
        sop_instance_uid=export.sop_instance_uid,
    )
    if overlays.documents:
        return overlays.documents[0]
    if explanations_waiting(session, job.id, export.series_uid):
        raise NotYet(f"the Grad-CAM explanations of series {export.series_uid} are not made yet")
    raise NotExportable(overlays.skipped or f"series {export.series_uid} has no overlay")


def export_instance(
    session: Session, blobs: BlobStore, settings: Settings, export: Export
) -> bytes:
    """The instance ``export`` sends: its series' SR or Grad-CAM overlay (with the row's
    UIDs), filed under the original patient and study.

    Raises:
        NotYet: the overlay's explanations are still being made.
        NotExportable: the job, its slices or its sealed patient attributes are gone, the
            report cannot be made, or no patient attributes were kept (PHI_KEY unset).
    """
    job = session.get(Job, export.job_id)
    if job is None:
        raise NotExportable(f"job {export.job_id} was deleted")
    study = export.study_uid or ""
    try:
        patient = open_patient(blobs, job.id, study, settings.phi_key)
    except SealError as exc:
        raise NotExportable(
            f"the patient attributes kept for study {study} cannot be opened: {exc}"
        ) from None
    if patient is None:
        raise NotExportable(
            f"no patient attributes were kept for study {study} (PHI_KEY unset at intake): "
            "the PACS could not file the result under its patient"
        )
    try:
        document = _document(session, blobs, settings, job, export)
    except IntakeError as exc:
        raise NotExportable(exc.detail) from None
    return with_patient(document, patient)


def outcome_values(
    export: Export, delivery: Delivery, now: datetime, settings: Settings
) -> tuple[str, dict[str, Any]]:
    """Where ``export`` stands after ``delivery`` (its attempt number is ``export.attempts``):
    the outcome to count and the row's new values."""
    if delivery.outcome == STORED:
        return STORED, dict(
            state=ExportState.STORED,
            stored_at=now,
            next_attempt_at=None,
            error=delivery.note,
            transaction_uid=delivery.transaction_uid,
            finished_at=None if delivery.transaction_uid else now,
        )
    if delivery.outcome == RETRY:
        when = next_attempt(
            export.created_at,
            export.attempts,
            now,
            settings.export_retry_window,
            settings.export_retry_base_ms / 1000,
            delivery.retry_after,
        )
        if when is not None:
            return RETRY, dict(next_attempt_at=when, error=delivery.detail, transaction_uid=None)
        detail = (
            f"retries ran out after {export.attempts} attempts in "
            f"{settings.export_retry_window} s (EXPORT_RETRY_WINDOW): {delivery.detail}"
        )
    else:
        detail = delivery.detail
    return FAILED, dict(
        state=ExportState.FAILED,
        next_attempt_at=None,
        error=detail,
        finished_at=now,
        transaction_uid=None,
    )


def _claim(
    session: Session, settings: Settings, attempted: Sequence[str]
) -> Optional[tuple[Export, Optional[Target], Optional[str]]]:
    """The next due export (not among ``attempted``) leased for one attempt, with its
    destination (or why there is none); None when none is due."""
    lease = 4 * settings.export_timeout + 30  # connect, associate, C-STORE, N-ACTION
    claimed = claim_due_exports(session, 1, lease, exclude=attempted)
    if not claimed:
        return None
    export = claimed[0]
    row = get_destination(session, export.destination)
    target, problem = None, None
    if row is None:
        problem = f"destination {export.destination} was removed"
    else:
        try:
            target = Target.of(row, credentials_of(row, settings.phi_key))
        except DestinationError as exc:
            problem = f"destination {export.destination}: {exc}"
        if row.kind == DestinationKind.DICOM and row.commitment:
            # kept before the N-ACTION is sent: the PACS's report may come before the
            # attempt is recorded, and finds its export by it
            export.transaction_uid = new_uid()
            session.flush()
    session.expunge(export)
    return export, target, problem


def attempt_export(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    export: Export,
    target: Optional[Target],
    problem: Optional[str],
    send: Send,
) -> Optional[str]:
    """Build, send and record one claimed export; the outcome recorded, or None when its
    row changed meanwhile (deleted with its job, or its destination removed)."""
    if target is None:
        delivery = Delivery(FAILED, problem or "no destination")
    else:
        try:
            with session_factory() as session:
                instance = export_instance(session, blobs, settings, export)
        except NotExportable as exc:
            delivery = Delivery(FAILED, str(exc))
        except NotYet as exc:  # waits, within the retry window, without a word to the PACS
            delivery = Delivery(RETRY, str(exc))
        else:
            delivery = send(target, instance, export)
    now = utcnow()
    outcome, values = outcome_values(export, delivery, now, settings)
    recorded = in_transaction(
        session_factory, lambda session: record_attempt(session, export, values)
    )
    then = ""
    if outcome == RETRY:
        then = f"; next attempt at {values['next_attempt_at']:%H:%M:%S} UTC"
    elif outcome == FAILED:
        then = f"; failed: {values['error']}" if delivery.outcome == RETRY else "; failed"
    log.info(
        "export %s of job %s: %s, attempt %d%s",
        export.id,
        export.job_id,
        delivery.detail,
        export.attempts,
        then,
    )
    if not recorded:
        return None
    count_export(outcome)
    return outcome


def export_due(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    send: Send,
    limit: int = 10,
) -> dict[str, str]:
    """One pass: due exports (up to ``limit``) attempted once each, one claimed at a time
    (its lease covers its own attempt only); export id → outcome. Stored exports whose
    commitment report is overdue are marked so."""
    with session_factory.begin() as session:
        note_missing_commitments(session, settings.export_commitment_timeout)
    outcomes: dict[str, str] = {}
    attempted: list[str] = []
    while len(attempted) < limit:
        with session_factory.begin() as session:
            claimed = _claim(session, settings, attempted)
        if claimed is None:
            break
        export, target, problem = claimed
        attempted.append(export.id)
        outcome = attempt_export(session_factory, blobs, settings, export, target, problem, send)
        if outcome is not None:
            outcomes[export.id] = outcome
    return outcomes

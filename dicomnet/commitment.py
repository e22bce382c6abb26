"""DICOM Storage Commitment, Push Model (PS3.4 Annex J).

After a result instance is stored, the sender asks the PACS to commit to keeping it: an
N-ACTION (Action Type ID 1, *Request Storage Commitment*) on the Storage Commitment Push
Model SOP Instance, naming a Transaction UID and the instances. The PACS answers later,
usually over a new association it opens to the sender's AE title (Orthanc does so, to
the modality registered under that AE title in its ``DicomModalities``), with an
N-EVENT-REPORT listing the instances it keeps (Event Type 1) and those it does not, with
a Failure Reason (Event Type 2). ``covidscan dicom-listen`` accepts that association and
applies the report to the exports (:func:`db.commitment.record_commitment`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.commitment import failure_reason, record_commitment

log = logging.getLogger(__name__)

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
"""Storage Commitment Push Model SOP Class."""
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""Its well-known SOP Instance, the one N-ACTION and N-EVENT-REPORT name."""
REQUEST_COMMITMENT = 1  # Action Type ID: Request Storage Commitment
SUCCESS, PROCESSING_FAILURE = 0x0000, 0x0110
NO_ANSWER = -1
"""What :func:`request_commitment` returns when the PACS gave no status (timed out,
aborted)."""


def requested_context() -> Any:
    """The presentation context an SCU requests to ask for Storage Commitment (the SCU
    role, the default: no role selection needed)."""
    from pynetdicom import build_context

    return build_context(STORAGE_COMMITMENT)


def request_commitment(
    assoc: Any, transaction_uid: str, instances: Sequence[tuple[str, str]]
) -> int:
    """Ask the PACS, on the open association ``assoc`` (which requested
    :func:`requested_context`), to commit to keeping ``instances`` ((SOP Class UID, SOP
    Instance UID) pairs) under ``transaction_uid``. Returns the N-ACTION's status
    (0x0000: the request is accepted; the report comes later), or :data:`NO_ANSWER`."""
    from pydicom.dataset import Dataset

    request = Dataset()
    request.TransactionUID = transaction_uid
    references = []
    for sop_class_uid, sop_instance_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        references.append(item)
    request.ReferencedSOPSequence = references
    status, _reply = assoc.send_n_action(
        request, REQUEST_COMMITMENT, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
    )
    code = getattr(status, "Status", None)
    return NO_ANSWER if code is None else int(code)


def parse_report(info: Any) -> tuple[str, list[str], dict[str, str]]:
    """(Transaction UID, committed SOP Instance UIDs, failed ones -> reason in words) of
    an N-EVENT-REPORT's Event Information."""
    committed = [
        str(item.ReferencedSOPInstanceUID)
        for item in info.get("ReferencedSOPSequence", None) or []
        if "ReferencedSOPInstanceUID" in item
    ]
    failed = {
        str(item.ReferencedSOPInstanceUID): failure_reason(int(item.get("FailureReason", 0)))
        for item in info.get("FailedSOPSequence", None) or []
        if "ReferencedSOPInstanceUID" in item
    }
    return str(info.get("TransactionUID", "")), committed, failed


def report_handler(
    session_factory: sessionmaker[Session], peer: Callable[[Any], str]
) -> Callable[[Any], tuple[int, None]]:
    """The EVT_N_EVENT_REPORT handler: applies a Storage Commitment report to the exports
    of its transaction and answers 0x0000 (0x0110 when it cannot be read or recorded).
    ``peer`` names the association's other end for the log (``AE@host``)."""

    def on_event_report(event: Any) -> tuple[int, None]:
        request = event.request
        sender = peer(event.assoc)
        if str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT:
            log.warning(
                "N-EVENT-REPORT from %s for SOP class %s refused: only Storage Commitment "
                "reports are taken",
                sender,
                request.AffectedSOPClassUID,
            )
            return 0x0122, None
        try:
            transaction_uid, committed, failed = parse_report(event.event_information)
        except Exception as exc:  # a report we cannot read is answered, not dropped silently
            log.warning("Storage Commitment report from %s unreadable: %s", sender, exc)
            return PROCESSING_FAILURE, None
        try:
            with session_factory.begin() as session:
                moved = record_commitment(session, transaction_uid, committed, failed)
        except Exception:
            log.exception("Storage Commitment report from %s not recorded", sender)
            return PROCESSING_FAILURE, None
        log.info(
            "Storage Commitment report (N-EVENT-REPORT, event type %s) from %s for "
            "transaction %s: %d instance(s) committed, %d failed%s; %d export(s) updated",
            request.EventTypeID,
            sender,
            transaction_uid,
            len(committed),
            len(failed),
            f" ({'; '.join(sorted(set(failed.values())))})" if failed else "",
            moved,
        )
        return SUCCESS, None

    return on_event_report

"""Pulling a cohort: an owner asks for studies of a registered PACS, by accession numbers
or study UIDs; the DICOM gateway (``covidscan dicom-listen``) retrieves them later.

Accession numbers identify a patient's study: they are sealed with PHI_KEY before they
reach the database, opened only by the gateway that asks the PACS for them, and never
written to a log, a metric or an answer. An answer names each item by its ``index`` in
the list sent (and the study UIDs found); the client that sent the list maps it back.
Study UIDs are not patient attributes: they are kept as sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Optional

from sqlalchemy.orm import Session

from core.errors import Conflict, Malformed
from core.jobs.service import Actor
from core.sealing import RETRIEVAL_ACCESSIONS, Sealer, SealError
from covidscan.retrieve_window import RetrieveWindow, window_open
from db.audit import record
from db.destinations import get_destination
from db.models import Retrieval, iso_utc
from db.retrievals import (
    BY_ACCESSION,
    BY_STUDY_UID,
    create_retrieval,
    item_outcome,
    retrieval_status,
)

__all__ = ["request_retrieval", "identifier_of", "describe", "BY_ACCESSION", "BY_STUDY_UID"]


def request_retrieval(
    session: Session,
    actor: Actor,
    source: str,
    phi_key: Optional[str],
    *,
    accession_numbers: Sequence[str] = (),
    study_uids: Sequence[str] = (),
) -> Retrieval:
    """Queue the retrieval of ``accession_numbers`` or ``study_uids`` (one of them) from the
    destination named ``source``, owned by ``actor``; with its audit row (not committed).

    Raises:
        Malformed: no destination is named ``source``, or neither or both lists are given.
        Conflict: accession numbers and no PHI_KEY to seal them with.
    """
    if bool(accession_numbers) == bool(study_uids):
        raise Malformed("give accession_numbers or study_uids (one of them, not empty)")
    if get_destination(session, source) is None:
        raise Malformed(
            f"source: no destination named {source!r}; an administrator registers it "
            "(covidscan destinations add NAME --dicom AET@HOST:PORT)",
            source=source,
        )
    sealed = None
    if accession_numbers:
        try:
            sealer = Sealer.from_setting(phi_key, "a retrieval by accession numbers")
        except SealError as exc:
            raise Conflict(
                f"{exc}. Accession numbers are kept only sealed; ask by study_uids, or ask "
                "the operator to set PHI_KEY"
            ) from None
        sealed = sealer.seal(RETRIEVAL_ACCESSIONS, json.dumps(list(accession_numbers)).encode())
    by = BY_ACCESSION if accession_numbers else BY_STUDY_UID
    count = len(accession_numbers) or len(study_uids)
    retrieval = create_retrieval(
        session,
        actor.owner,
        actor.key_id,
        source,
        by,
        count,
        sealed_accessions=sealed,
        study_uids=list(study_uids) or None,
    )
    record(
        session,
        "retrieval.create",
        key_id=actor.key_id,
        owner=actor.owner,
        detail={"retrieval_id": retrieval.id, "source": source, "by": by, "items": count},
    )
    return retrieval


def identifier_of(retrieval: Retrieval, position: int, phi_key: Optional[str]) -> str:
    """The accession number or study UID at ``position`` of the retrieval's list.

    Raises:
        SealError: the accession numbers cannot be opened (no PHI_KEY, or another one).
    """
    if retrieval.by == BY_STUDY_UID:
        return (retrieval.study_uids or [])[position]
    sealer = Sealer.from_setting(phi_key, "opening a retrieval's accession numbers")
    accessions = json.loads(sealer.open(RETRIEVAL_ACCESSIONS, retrieval.sealed_accessions or b""))
    return str(accessions[position])


def describe(
    retrieval: Retrieval, window: Optional[RetrieveWindow], now: Optional[datetime] = None
) -> dict[str, Any]:
    """What may be shown of a retrieval: never an accession number (items go by index)."""
    is_open = window_open(window, now)
    return {
        "id": retrieval.id,
        "source": retrieval.source,
        "by": retrieval.by,
        "status": retrieval_status(retrieval.items, is_open).value,
        "window": str(window) if window is not None else None,
        "created_at": iso_utc(retrieval.created_at),
        "items": [
            {
                "index": item.position,
                "outcome": item_outcome(item).value,
                "study_uids": item.study_uids or [],
                "instances_expected": item.instances_expected,
                "instances_retrieved": item.instances_retrieved,
                "job_id": item.job_id,
                "reason": item.error,
                "finished_at": iso_utc(item.finished_at),
            }
            for item in retrieval.items
        ],
    }

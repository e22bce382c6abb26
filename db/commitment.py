"""Storage Commitment reports (PS3.4 Annex J) applied to the exports they answer.

A destination that offers Storage Commitment is asked, after a result instance was
stored, to commit to keeping it (an N-ACTION naming a Transaction UID); its answer comes
later in an N-EVENT-REPORT that lists, for that transaction, the instances it keeps and
those it will not with a reason. Each moves its export from ``stored`` to ``committed``
or ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from covidscan.contract import ExportState
from db.models import Export, utcnow

FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP Class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}
"""Failure Reason (0008,1197) values of PS3.4 Annex J, in words."""


def failure_reason(code: int) -> str:
    """The Failure Reason ``code`` in words, with its value (``0x0112 no such object
    instance``); an unknown code is named as such."""
    return f"0x{code:04X} {FAILURE_REASONS.get(code, 'unknown failure reason')}"


def record_commitment(
    session: Session,
    transaction_uid: str,
    committed: Sequence[str],
    failed: Mapping[str, str],
) -> int:
    """Apply a Storage Commitment report to the exports of ``transaction_uid`` (not
    committed): those whose SOP Instance UID is in ``committed`` become ``committed``
    (``committed_at`` now), those in ``failed`` become ``failed`` with the reason given.
    Only exports still ``stored`` move (a report sent twice changes nothing). Returns how
    many moved.
    """
    wanted = set(committed) | set(failed)
    if not wanted:
        return 0
    rows = session.scalars(
        select(Export)
        .where(
            Export.transaction_uid == transaction_uid,
            Export.sop_instance_uid.in_(sorted(wanted)),
            Export.state == ExportState.STORED.value,
        )
        .with_for_update()
    )
    now = utcnow()
    moved = 0
    for export in rows:
        if export.sop_instance_uid in failed:
            export.state = ExportState.FAILED.value
            export.error = f"Storage Commitment failed: {failed[export.sop_instance_uid]}"[:500]
            export.finished_at = now
        else:
            export.state = ExportState.COMMITTED.value
            export.committed_at = now
            export.finished_at = export.finished_at or now
        moved += 1
    return moved

"""PACS destinations in the database: add, list, find and remove them by name.

Every function takes a ``session``; the caller owns the transaction. What a destination
may hold is checked before (:mod:`core.destinations`); credentials arrive sealed.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.exports import fail_destination_exports
from db.models import Destination, DestinationKind, ExportDefault


class DestinationExists(ValueError):
    """A destination of that name is registered already."""


def add_destination(
    session: Session,
    name: str,
    kind: DestinationKind,
    *,
    ae_title: Optional[str] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    tls: bool = False,
    commitment: bool = False,
    url: Optional[str] = None,
    credentials: Optional[bytes] = None,
) -> Destination:
    """Add a destination and flush it (not committed).

    Raises:
        DestinationExists: ``name`` is taken (when found only at the flush, the session
            is rolled back).
    """
    if get_destination(session, name) is not None:
        raise DestinationExists(
            f"a destination named {name!r} exists already; remove it first to change it"
        )
    row = Destination(
        name=name,
        kind=kind,
        ae_title=ae_title,
        host=host,
        port=port,
        tls=tls,
        commitment=commitment,
        url=url,
        credentials=credentials,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # added by someone else since the check above
        session.rollback()
        raise DestinationExists(f"a destination named {name!r} exists already") from None
    return row


def list_destinations(session: Session) -> list[Destination]:
    """Every destination, by name."""
    return list(session.scalars(select(Destination).order_by(Destination.name)))


def get_destination(session: Session, name: str) -> Optional[Destination]:
    """The destination named ``name``, or None."""
    return session.scalar(select(Destination).where(Destination.name == name))


def remove_destination(session: Session, name: str) -> Optional[Destination]:
    """Delete the destination named ``name`` (not committed); the row removed, or None.
    Its pending exports fail, saying it was removed; owners' defaults no longer name it."""
    row = get_destination(session, name)
    if row is not None:
        fail_destination_exports(session, name)
        for default in session.scalars(select(ExportDefault)):
            if name in default.export_to:
                default.export_to = [n for n in default.export_to if n != name]
        session.delete(row)
        session.flush()
    return row


def destination_for_ae(session: Session, ae_title: str) -> Optional[Destination]:
    """The DICOM destination registered with ``ae_title`` (the first by name), or None."""
    return session.scalars(
        select(Destination)
        .where(Destination.kind == DestinationKind.DICOM, Destination.ae_title == ae_title)
        .order_by(Destination.name)
        .limit(1)
    ).first()


def owner_export_to(session: Session, owner: Optional[str]) -> list[str]:
    """The destinations ``owner``'s jobs go to when they name none (none set: empty)."""
    if owner is None:
        return []
    row = session.get(ExportDefault, owner)
    return list(row.export_to) if row is not None else []


def set_owner_export_to(session: Session, owner: str, names: list[str]) -> None:
    """Set (an empty list: clear) ``owner``'s default destinations; not committed."""
    row = session.get(ExportDefault, owner)
    if row is None:
        session.add(ExportDefault(owner=owner, export_to=list(names)))
    else:
        row.export_to = list(names)

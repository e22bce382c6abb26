"""PACS destinations: what an administrator may register, checked once for the CLI and the API.

A ``dicom`` destination is ``AE_TITLE@HOST:PORT`` (optionally over TLS, optionally asked
for Storage Commitment); a ``dicomweb`` one is a DICOMweb base URL with an optional bearer
token or basic auth. Credentials are sealed with PHI_KEY before they reach the database
and are never shown again: listings say only whether there are some.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from core.sealing import DESTINATION_CREDENTIALS, Sealer, SealError
from db.destinations import add_destination
from db.models import Destination, DestinationKind, iso_utc

__all__ = [
    "DestinationError",
    "Credentials",
    "DestinationSpec",
    "export_names",
    "parse_dicom_address",
    "dicom_spec",
    "dicomweb_spec",
    "register",
    "credentials_of",
    "describe",
]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# PS3.5 6.2: AE titles are up to 16 characters of the default repertoire, no backslash.
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
DICOM_ADDRESS = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


class DestinationError(ValueError):
    """A destination's fields are wrong, or its credentials cannot be sealed or opened."""


@dataclass(frozen=True)
class Credentials:
    """How a DICOMweb destination is authenticated: a bearer token, or basic auth."""

    token: Optional[str] = None
    basic: Optional[tuple[str, str]] = None

    def to_bytes(self) -> bytes:
        return json.dumps({"token": self.token, "basic": self.basic}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Credentials:
        value = json.loads(raw)
        basic = value.get("basic")
        return cls(token=value.get("token"), basic=tuple(basic) if basic else None)

    def __repr__(self) -> str:  # never the secrets themselves
        return f"Credentials(token={self.token is not None}, basic={self.basic is not None})"


@dataclass(frozen=True)
class DestinationSpec:
    """A destination as asked for, checked, before it is stored."""

    name: str
    kind: DestinationKind
    ae_title: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    tls: bool = False
    commitment: bool = False
    url: Optional[str] = None
    credentials: Optional[Credentials] = None


NO_DESTINATION = "none"
"""What ``export_to`` says for no destination at all (so no destination has this name)."""


def checked_name(raw: str) -> str:
    name = (raw or "").strip()
    if name.lower() == NO_DESTINATION:
        raise DestinationError(f"{name!r} is reserved: export_to={NO_DESTINATION} means none")
    if not NAME.match(name):
        raise DestinationError(
            f"name must be 1-64 letters, digits, '.', '_' or '-' (starting "
            f"with a letter or digit), got {raw!r}"
        )
    return name


def export_names(raw: Optional[str]) -> list[str]:
    """The destination names of an ``export_to`` (``NAME[,NAME…]``, or ``none``), each
    checked, each once.

    Raises:
        DestinationError: a name is not a destination name.
    """
    if (raw or "").strip().lower() == NO_DESTINATION:
        return []
    names = [part.strip() for part in (raw or "").split(",") if part.strip()]
    return list(dict.fromkeys(checked_name(name) for name in names))


def checked_ae_title(raw: str) -> str:
    aet = (raw or "").strip()
    if not AE_TITLE.match(aet):
        raise DestinationError(
            f"AE title must be 1-16 printable ASCII characters without a backslash, got {raw!r}"
        )
    return aet


def checked_port(raw: Any) -> int:
    try:
        port = int(raw)
    except (TypeError, ValueError):
        raise DestinationError(f"port must be a number from 1 to 65535, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise DestinationError(f"port must be a number from 1 to 65535, got {port}")
    return port


def parse_dicom_address(raw: str) -> tuple[str, str, int]:
    """``AE_TITLE@HOST:PORT`` (an IPv6 host in brackets) as (AE title, host, port).

    Raises:
        DestinationError: another shape, or a field out of range.
    """
    match = DICOM_ADDRESS.match((raw or "").strip())
    if not match:
        raise DestinationError(
            f"a DICOM destination is AE_TITLE@HOST:PORT, e.g. "
            f"PACS@pacs.example.org:104, got {raw!r}"
        )
    host = match["host"].strip("[]")
    return checked_ae_title(match["aet"]), host, checked_port(match["port"])


def dicom_spec(
    name: str, ae_title: str, host: str, port: Any, *, tls: bool = False, commitment: bool = True
) -> DestinationSpec:
    """A DICOM destination. Raises DestinationError naming the wrong field."""
    host = (host or "").strip()
    if not host or len(host) > 255 or any(c in host for c in " /@"):
        raise DestinationError(f"host must be a host name or address, got {host!r}")
    return DestinationSpec(
        checked_name(name),
        DestinationKind.DICOM,
        ae_title=checked_ae_title(ae_title),
        host=host,
        port=checked_port(port),
        tls=bool(tls),
        commitment=bool(commitment),
    )


def dicomweb_spec(
    name: str, url: str, *, token: Optional[str] = None, basic: Optional[str] = None
) -> DestinationSpec:
    """A DICOMweb destination; ``basic`` is ``USER:PASSWORD``. Raises DestinationError."""
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise DestinationError(
            f"url must be the DICOMweb service's http(s) base URL, e.g. "
            f"https://pacs.example.org/dicom-web, got {url!r}"
        )
    if parts.username or parts.password:
        raise DestinationError("url must not hold credentials: give them as a token or basic")
    token = (token or "").strip() or None
    if token and basic:
        raise DestinationError("give a bearer token or basic auth, not both")
    pair: Optional[tuple[str, str]] = None
    if basic:
        user, colon, password = basic.partition(":")
        if not colon or not user:
            raise DestinationError("basic auth is USER:PASSWORD")
        pair = (user, password)
    credentials = Credentials(token=token, basic=pair) if token or pair else None
    return DestinationSpec(
        checked_name(name), DestinationKind.DICOMWEB, url=url, credentials=credentials
    )


def register(session: Session, spec: DestinationSpec, phi_key: Optional[str]) -> Destination:
    """Add ``spec``, its credentials sealed with ``phi_key`` (not committed).

    Raises:
        DestinationError: there are credentials and no PHI_KEY to seal them with.
        db.destinations.DestinationExists: the name is taken.
    """
    sealed = None
    if spec.credentials is not None:
        try:
            sealer = Sealer.from_setting(phi_key, "registering a destination with credentials")
        except SealError as exc:
            raise DestinationError(str(exc)) from None
        sealed = sealer.seal(DESTINATION_CREDENTIALS, spec.credentials.to_bytes())
    return add_destination(
        session,
        spec.name,
        spec.kind,
        ae_title=spec.ae_title,
        host=spec.host,
        port=spec.port,
        tls=spec.tls,
        commitment=spec.commitment,
        url=spec.url,
        credentials=sealed,
    )


def credentials_of(row: Destination, phi_key: Optional[str]) -> Optional[Credentials]:
    """The destination's credentials, opened with ``phi_key``; None if it has none.

    Raises:
        DestinationError: there is no PHI_KEY, or the sealed credentials cannot be opened.
    """
    if row.credentials is None:
        return None
    try:
        sealer = Sealer.from_setting(
            phi_key, f"opening the credentials of destination {row.name!r}"
        )
        return Credentials.from_bytes(sealer.open(DESTINATION_CREDENTIALS, row.credentials))
    except SealError as exc:
        raise DestinationError(str(exc)) from None


def describe(row: Destination) -> dict[str, Any]:
    """What may be shown of a destination: everything but the credentials."""
    dicom = row.kind == DestinationKind.DICOM
    return {
        "name": row.name,
        "kind": row.kind.value,
        "ae_title": row.ae_title,
        "host": row.host,
        "port": row.port,
        "tls": row.tls if dicom else None,
        "commitment": row.commitment if dicom else None,
        "url": row.url,
        "has_credentials": row.credentials is not None,
        "created_at": iso_utc(row.created_at),
    }

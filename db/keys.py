"""API keys and the browser sessions opened with them.

A key reads ``csk_<id>_<secret>``: the id names the row, the secret (32 random bytes)
proves possession. Only the secret's SHA-256 is stored. A slow password hash buys
nothing for a 256-bit random secret (it cannot be guessed), and a fast one keeps every
request cheap; the comparison is constant-time. Every function takes a ``session``;
the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import ApiKey, WebSession, utcnow
from db.session import rows_changed

KEY_PREFIX = "csk_"
SCOPES = ("submit", "read", "metrics", "admin")


class ApiKeyError(ValueError):
    """A key or a key id is malformed, or names no key."""


@dataclass(frozen=True)
class NewKey:
    """A key just created: the row and the only copy of the full key."""

    row: ApiKey
    token: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_scopes(raw: str) -> str:
    """``"read,submit"`` from a comma-separated list, checked against :data:`SCOPES`.

    Raises:
        ApiKeyError: an unknown or missing scope.
    """
    scopes = sorted({s.strip().lower() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ApiKeyError(f"scopes must be some of {', '.join(SCOPES)}, got {raw!r}")
    return ",".join(scopes)


def create_key(
    session: Session, owner: str, scopes: str, expires_at: Optional[datetime] = None
) -> NewKey:
    """Add a key for ``owner`` with ``scopes`` (see :func:`parse_scopes`); not committed."""
    owner = owner.strip()
    if not owner or len(owner) > 200:
        raise ApiKeyError("an owner is a name of 1 to 200 characters")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        id=key_id,
        owner=owner,
        scopes=parse_scopes(scopes),
        secret_sha256=_sha256(secret),
        expires_at=expires_at,
    )
    session.add(row)
    return NewKey(row, f"{KEY_PREFIX}{key_id}_{secret}")


def key_id_of(text: str) -> str:
    """The id in ``csk_<id>``, ``csk_<id>_<secret>`` or a bare id.

    Raises:
        ApiKeyError: it is not shaped like a key.
    """
    text = text.strip()
    if text.startswith(KEY_PREFIX):
        text = text[len(KEY_PREFIX) :]
    key_id = text.split("_", 1)[0]
    if not key_id or len(key_id) > 32 or not all(c in "0123456789abcdef" for c in key_id):
        raise ApiKeyError("a key id looks like csk_0123456789abcdef")
    return key_id


def usable(row: Optional[ApiKey], now: Optional[datetime] = None) -> bool:
    """The key exists, is not revoked and has not expired."""
    if row is None or row.revoked_at is not None:
        return False
    now = now or utcnow()
    return row.expires_at is None or row.expires_at > now


def authenticate(session: Session, token: str) -> Optional[ApiKey]:
    """The usable key ``token`` proves, or None (unknown, malformed, revoked or expired alike)."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = token[len(KEY_PREFIX) :].partition("_")
    row = session.get(ApiKey, key_id) if key_id and len(key_id) <= 32 else None
    expected = row.secret_sha256 if row is not None else _sha256("no such key")
    matches = hmac.compare_digest(_sha256(secret), expected)
    return row if matches and usable(row) else None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.owner, ApiKey.created_at)))


def revoke_key(session: Session, key_text: str) -> ApiKey:
    """Revoke the key ``key_text`` names (its id, ``csk_<id>`` or the whole key) and end
    its browser sessions.

    Raises:
        ApiKeyError: malformed, or no such key.
    """
    row = session.get(ApiKey, key_id_of(key_text))
    if row is None:
        raise ApiKeyError(f"no key with id {key_id_of(key_text)!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.execute(delete(WebSession).where(WebSession.key_id == row.id))
    return row


def open_session(session: Session, key: ApiKey, hours: int) -> tuple[str, WebSession]:
    """A new browser session for ``key``: the cookie's value and the row (not committed)."""
    token = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(hours=hours)
    if key.expires_at is not None:
        expires = min(expires, key.expires_at)
    row = WebSession(
        token_sha256=_sha256(token),
        key_id=key.id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=expires,
    )
    session.add(row)
    return token, row


def find_session(session: Session, token: str) -> Optional[WebSession]:
    """The live session the cookie ``token`` names whose key is still usable, else None."""
    row = session.get(WebSession, _sha256(token))
    if row is None or row.expires_at <= utcnow() or not usable(row.key):
        return None
    return row


def close_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_sha256 == _sha256(token)))


def delete_expired_sessions(session: Session) -> int:
    """Remove browser sessions past their expiry; returns how many."""
    return rows_changed(session, delete(WebSession).where(WebSession.expires_at < utcnow()))

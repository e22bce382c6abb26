"""``covidscan keys``: create, list and revoke API keys.

Like ``covidscan models``, these commands talk to the database (DATABASE_URL) directly:
whoever can run them on a host that reaches the database is an operator. Every change is
written to the audit log under the operating-system user's name (``cli:<user>``).
"""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Optional

import click

from cli.models import registry_context

DURATION = re.compile(r"^(\d+)\s*([hdw])$")
UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def cli_actor() -> str:
    """How the audit log names a change made from this command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "cli:unknown"


def parse_expiry(raw: Optional[str], now: Optional[datetime] = None) -> Optional[datetime]:
    """``30d``, ``12h``, ``2w`` from now, or an ISO date/time (UTC unless it says otherwise).

    Raises:
        click.BadParameter: anything else, or a moment in the past.
    """
    if raw is None:
        return None
    now = now or datetime.now(UTC)
    match = DURATION.match(raw.strip().lower())
    try:
        if match:
            moment = now + timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
        else:
            moment = datetime.fromisoformat(raw.strip())
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise click.BadParameter(
            f"use 30d, 12h, 2w or a date such as 2027-01-31, got {raw!r}", param_hint="--expires"
        ) from None
    if moment <= now:
        raise click.BadParameter(f"{raw!r} is in the past", param_hint="--expires")
    return moment


@click.group()
def keys() -> None:
    """API keys: who may submit, read, or administer."""


@keys.command("create")
@click.option(
    "--owner", required=True, help="Who the key's jobs belong to (several keys may share an owner)."
)
@click.option(
    "--scopes",
    default="submit,read",
    show_default=True,
    help="Comma-separated: submit, read, metrics (GET /metrics only), admin "
    "(admin: every job, the audit log).",
)
@click.option("--expires", help="30d, 12h, 2w, or a date such as 2027-01-31 (default: never).")
def create(owner: str, scopes: str, expires: Optional[str]) -> None:
    """Create a key and print it once: only its hash is stored."""
    from db.audit import record
    from db.keys import ApiKeyError, create_key

    expires_at = parse_expiry(expires)
    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory.begin() as session,
    ):
        try:
            new = create_key(session, owner, scopes, expires_at)
        except ApiKeyError as exc:
            raise click.ClickException(str(exc)) from None
        session.flush()
        record(
            session,
            "key.create",
            key_id=None,
            owner=cli_actor(),
            detail={"key_id": new.row.id, "key_owner": new.row.owner, "scopes": new.row.scopes},
        )
    click.echo(
        f"created key csk_{new.row.id} for {new.row.owner} ({new.row.scopes})"
        f"{', expires ' + expires_at.isoformat() if expires_at else ''}; "
        "it is shown only now:",
        err=True,
    )
    click.echo(new.token)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def list_(as_json: bool) -> None:
    """Every key: id, owner, scopes, created, expires, revoked (never the secret)."""
    from db.keys import list_keys, usable
    from db.models import iso_utc

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory() as session,
    ):
        rows = [
            {
                "id": f"csk_{k.id}",
                "owner": k.owner,
                "scopes": k.scopes,
                "created_at": k.created_at,
                "expires_at": k.expires_at,
                "revoked_at": k.revoked_at,
                "usable": usable(k),
            }
            for k in list_keys(session)
        ]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=iso_utc))  # its times, as the API writes them
        return
    if not rows:
        click.echo("no keys: create one with covidscan keys create --owner NAME")
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else ("expired" if not row["usable"] else "active")
        expires = f"  expires {row['expires_at']:%Y-%m-%d %H:%M}" if row["expires_at"] else ""
        click.echo(f"{row['id']}  {row['owner']}  {row['scopes']}  {state}{expires}")


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke KEY_ID (csk_<id>, or the whole key); its browser sessions end at once."""
    from db.audit import record
    from db.keys import ApiKeyError, revoke_key

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory.begin() as session,
    ):
        try:
            row = revoke_key(session, key_id)
        except ApiKeyError as exc:
            raise click.ClickException(str(exc)) from None
        record(
            session,
            "key.revoke",
            key_id=None,
            owner=cli_actor(),
            detail={"key_id": row.id, "key_owner": row.owner},
        )
    click.echo(f"revoked csk_{row.id} ({row.owner})")

"""``covidscan destinations``: the PACS that results are sent to.

Like ``covidscan keys``, these commands talk to the database (DATABASE_URL) directly:
whoever can run them is an operator. Adding and removing are written to the audit log
under the operating-system user's name. Credentials are sealed with PHI_KEY and never
printed again.
"""

from __future__ import annotations

import json
from typing import Optional

import click

from cli.keys import cli_actor
from cli.models import registry_context


@click.group()
def destinations() -> None:
    """PACS destinations: where results are delivered (DICOM C-STORE or DICOMweb STOW-RS)."""


@destinations.command("add")
@click.argument("name")
@click.option(
    "--dicom",
    "address",
    metavar="AET@HOST:PORT",
    help="A DICOM destination: its AE title, host and port.",
)
@click.option(
    "--dicomweb",
    "url",
    metavar="URL",
    help="A DICOMweb destination: its base URL (STOW-RS, QIDO-RS under it).",
)
@click.option(
    "--commitment/--no-commitment",
    default=True,
    show_default=True,
    help="DICOM: ask for Storage Commitment when the PACS offers it.",
)
@click.option("--tls", is_flag=True, help="DICOM: associate over TLS.")
@click.option(
    "--token",
    metavar="T",
    help="DICOMweb: a bearer token (sealed with PHI_KEY); `-` reads it from standard input.",
)
@click.option(
    "--basic",
    metavar="USER:PASSWORD",
    help="DICOMweb: basic auth (sealed with PHI_KEY); `-` reads it from standard input.",
)
def add(
    name: str,
    address: Optional[str],
    url: Optional[str],
    commitment: bool,
    tls: bool,
    token: Optional[str],
    basic: Optional[str],
) -> None:
    """Register NAME, reached by DICOM (--dicom) or DICOMweb (--dicomweb)."""
    from core.destinations import (
        DestinationError,
        dicom_spec,
        dicomweb_spec,
        parse_dicom_address,
        register,
    )
    from db.audit import record
    from db.destinations import DestinationExists

    if bool(address) == bool(url):
        raise click.UsageError("give one of --dicom AET@HOST:PORT or --dicomweb URL")
    if token == "-" and basic == "-":
        raise click.UsageError("only one of --token and --basic can be read from standard input")
    # "-": read from standard input, so that the secret stays out of the shell's history and
    # of the process list.
    token = _stdin_line() if token == "-" else token
    basic = _stdin_line() if basic == "-" else basic
    try:
        if address:
            if token or basic:
                raise click.UsageError("--token and --basic are for --dicomweb destinations")
            ae_title, host, port = parse_dicom_address(address)
            spec = dicom_spec(name, ae_title, host, port, tls=tls, commitment=commitment)
        else:
            spec = dicomweb_spec(name, str(url), token=token, basic=basic)
    except DestinationError as exc:
        raise click.ClickException(str(exc)) from None
    with (
        registry_context() as (settings, session_factory, _store),
        session_factory.begin() as session,
    ):
        try:
            row = register(session, spec, settings.phi_key)
        except (DestinationError, DestinationExists) as exc:
            raise click.ClickException(str(exc)) from None
        record(
            session,
            "destination.add",
            key_id=None,
            owner=cli_actor(),
            detail={
                "name": row.name,
                "kind": row.kind.value,
                "credentials": row.credentials is not None,
            },
        )
        shown = _line(row)
    click.echo(f"added {shown}")


@destinations.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
def list_(as_json: bool) -> None:
    """Every destination (never its credentials: only whether it has some)."""
    from core.destinations import describe
    from db.destinations import list_destinations

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory() as session,
    ):
        rows = list_destinations(session)
        shown = [describe(row) for row in rows]
        lines = [_line(row) for row in rows]
    if as_json:
        for entry in shown:
            click.echo(json.dumps(entry))
        return
    if not lines:
        click.echo(
            "no destinations: add one with covidscan destinations add NAME "
            "--dicom AET@HOST:PORT or --dicomweb URL"
        )
    for line in lines:
        click.echo(line)


@destinations.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Remove the destination NAME."""
    from db.audit import record
    from db.destinations import remove_destination

    with (
        registry_context() as (_settings, session_factory, _store),
        session_factory.begin() as session,
    ):
        row = remove_destination(session, name)
        if row is None:
            raise click.ClickException(f"no destination named {name!r}")
        record(
            session,
            "destination.remove",
            key_id=None,
            owner=cli_actor(),
            detail={"name": row.name, "kind": row.kind.value},
        )
    click.echo(f"removed {name}")


@destinations.command("test")
@click.argument("name")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each step.")
@click.option(
    "--calling-ae-title",
    default="COVIDSCAN",
    show_default=True,
    help="DICOM: the AE title the C-ECHO is sent from.",
)
def test(name: str, timeout: float, calling_ae_title: str) -> None:
    """C-ECHO a DICOM destination, or query a DICOMweb one (QIDO-RS); exit 1 with the reason
    when it does not answer as it should."""
    from core.destinations import DestinationError, credentials_of
    from db.destinations import get_destination
    from dicomnet.probe import probe

    with (
        registry_context() as (settings, session_factory, _store),
        session_factory() as session,
    ):
        row = get_destination(session, name)
        if row is None:
            raise click.ClickException(f"no destination named {name!r}")
        try:
            credentials = credentials_of(row, settings.phi_key)
        except DestinationError as exc:
            raise click.ClickException(str(exc)) from None
        session.expunge(row)
    result = probe(row, credentials, timeout=timeout, calling_ae_title=calling_ae_title)
    if not result.ok:
        raise click.ClickException(f"{name}: {result.message}")
    click.echo(f"{name}: {result.message}")


def _stdin_line() -> str:
    # click.open_file("-"): stdin as click.get_text_stream gave it (deprecated in Click 8.5)
    with click.open_file("-") as stdin:
        line: str = stdin.readline()
    return line.strip()


def _line(row) -> str:
    """One destination on one line; credentials only as yes/no."""
    if row.kind.value == "dicom":
        where = (
            f"dicom {row.ae_title}@{row.host}:{row.port}"
            f"{'  tls' if row.tls else ''}  commitment: {'yes' if row.commitment else 'no'}"
        )
    else:
        where = f"dicomweb {row.url}"
    return f"{row.name}  {where}  credentials: {'yes' if row.credentials is not None else 'no'}"

"""``covidscan exports``: results sent to PACS destinations, looked at and sent by hand.

``send-due`` runs one pass of what ``covidscan dicom-listen`` does every
``EXPORT_POLL_SECONDS``: it talks to DATABASE_URL and the blob store directly (with
PHI_KEY, to put the patient attributes back), and sends as ``--ae-title``. ``list`` shows
a job's deliveries from the database, as ``GET /v1/jobs/<id>/exports`` does.
"""

from __future__ import annotations

import json
import logging
from typing import NoReturn

import click


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _settings():
    from covidscan.settings import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc))


@click.group()
def exports() -> None:
    """Deliveries of results to PACS destinations (each series' SR, per destination)."""


@exports.command("send-due")
@click.option("--ae-title", default="COVIDSCAN", show_default=True, help="Our calling AE title.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
def send_due_command(ae_title: str, limit: int) -> None:
    """Send every export that is due now, once, and say what each came to."""
    from db.blobs import open_blob_store
    from db.session import make_engine, make_session_factory
    from dicomnet.exporter import send_due

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    engine = make_engine(settings.database_url)
    try:
        outcomes = send_due(
            settings,
            make_session_factory(engine),
            open_blob_store(settings.blob_dir, settings.blob_store),
            ae_title.strip(),
            limit,
        )
    finally:
        engine.dispose()
    for export_id, outcome in outcomes.items():
        click.echo(f"{export_id} {outcome}")
    click.echo(f"{len(outcomes)} export(s) attempted")


@exports.command("list")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(job_id: str, as_json: bool) -> None:
    """A job's deliveries: destination, series, state, attempts and the last reason."""
    from db.exports import job_exports
    from db.models import iso_utc
    from db.session import make_engine, make_session_factory

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = job_exports(session, job_id)
            for row in rows:
                if as_json:
                    fields = ("id", "destination", "kind", "series_uid", "sop_instance_uid")
                    body = {field: getattr(row, field) for field in fields}
                    body.update(
                        state=row.state,
                        attempts=row.attempts,
                        error=row.error,
                        stored_at=iso_utc(row.stored_at),
                        committed_at=iso_utc(row.committed_at),
                    )
                    click.echo(json.dumps(body))
                else:
                    reason = f"  {row.error}" if row.error else ""
                    click.echo(
                        f"{row.destination}  {row.kind}  {row.series_uid}  {row.state}  "
                        f"attempts: {row.attempts}{reason}"
                    )
    finally:
        engine.dispose()
    if not rows and not as_json:
        click.echo(f"job {job_id} has no exports")


@exports.command("defaults")
@click.argument("owner")
@click.option(
    "--set",
    "names",
    metavar="NAME[,NAME…]",
    help="Set the owner's default destinations (`none` clears them).",
)
def defaults_command(owner: str, names: str | None) -> None:
    """Show (or --set) where OWNER's jobs are sent when they name no destination, as
    ``GET``/``PUT /v1/export-defaults`` do for the caller's own owner."""
    from core.errors import Malformed
    from core.jobs.service import JobService
    from db.destinations import owner_export_to, set_owner_export_to
    from db.session import make_engine, make_session_factory

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            if names is not None:
                try:
                    chosen = JobService.resolve_destinations(session, names)
                except Malformed as exc:
                    _fail(exc.detail)
                set_owner_export_to(session, owner, chosen)
            current = owner_export_to(session, owner)
    finally:
        engine.dispose()
    click.echo(", ".join(current) if current else f"{owner} has no default destinations")

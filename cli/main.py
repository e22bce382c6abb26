"""The ``covidscan`` command: submit jobs, follow them, read results, run the stack."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn, Optional

import click

from cli.destinations import destinations
from cli.exports import exports
from cli.keys import keys
from cli.models import models
from cli.pull import pull
from cli.train import evaluate, train
from covidscan import __version__
from covidscan.contract import JobStatus, ScanStatus
from covidscan.settings import PRECISIONS
from db.models import PRIORITIES
from dicomnet.listener import dicom_listen

DEFAULT_URL = "http://127.0.0.1:5000"


def _client(ctx: click.Context):
    from cli.client import Client
    from covidscan.settings import ConfigError, load_client_settings

    try:
        settings = load_client_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return Client(ctx.obj["url"] or settings.covidscan_url, api_key=settings.api_key())


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@click.group()
@click.version_option(__version__, "--version", prog_name="covidscan")
@click.option(
    "--url",
    help="The covidscan server (default: COVIDSCAN_URL, else the one make run "
    "starts). The API key comes from COVIDSCAN_API_KEY, else the file "
    "make run saved (API_KEY_FILE, default COVIDSCAN_VAR_DIR/api-key).",
)
@click.pass_context
def main(ctx: click.Context, url: Optional[str]) -> None:
    """Bulk COVID-19 classification of chest CT slices."""
    ctx.ensure_object(dict)["url"] = url


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="A name for the job.")
@click.option("--model", help="NAME or NAME:VERSION of a registered model (default: the default).")
@click.option(
    "--priority",
    type=click.Choice(PRIORITIES),
    default=None,
    help="Waiting scans of higher priority jobs are classified first (default normal).",
)
@click.option(
    "--callback-url",
    metavar="URL",
    help="POST a signed event to URL when the job ends (see docs/use/webhooks.md).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="The numeric precision asked of the model (default: the worker's "
    "INFERENCE_PRECISION; see docs/trust/fidelity.md).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also compute a Grad-CAM heatmap of every scan (GET /v1/scans/<id>/heatmap).",
)
@click.option(
    "--allow-modality",
    metavar="MODALITIES",
    help="DICOM modalities to classify besides CT, e.g. MR,PT (others are skipped).",
)
@click.option(
    "--export-to",
    metavar="NAME[,NAME…]",
    help="Send each complete, classified DICOM series' result (its SR) to these registered "
    "destinations (`covidscan destinations list`); default: the owner's defaults "
    "(`/v1/export-defaults`); `none`: none.",
)
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between status polls.")
@click.option(
    "--table",
    is_flag=True,
    help="With --wait, also print every scan's result (default: a summary).",
)
@click.pass_context
def submit(
    ctx: click.Context,
    paths: tuple[Path, ...],
    name: Optional[str],
    model: Optional[str],
    priority: Optional[str],
    callback_url: Optional[str],
    precision: Optional[str],
    explain: bool,
    allow_modality: Optional[str],
    export_to: Optional[str],
    wait: bool,
    poll: float,
    table: bool,
) -> None:
    """Upload PNG/JPEG/DICOM slices, folders of them (a PACS export too), or ZIP archives
    as one job."""
    from pydantic import ValidationError

    from api.fields import problem_text
    from api.schemas import SubmissionOptions
    from cli.client import ApiError, collect_files

    try:  # checked here as the server checks them: a mistake costs no upload
        options = SubmissionOptions.model_validate(
            {
                "name": name,
                "model": model,
                "priority": priority,
                "callback_url": callback_url,
                "precision": precision,
                "explain": "gradcam" if explain else None,
                "export_to": export_to,
            }
        )
    except ValidationError as exc:
        _fail(problem_text(exc, SubmissionOptions))
    files = collect_files(list(paths))
    if not files:
        _fail("no PNG, JPEG, DICOM or ZIP files found in " + ", ".join(map(str, paths)))
    root = paths[0] if len(paths) == 1 and paths[0].is_dir() else None
    client = _client(ctx)
    try:
        job = client.submit(files, options, root=root, allow_modality=allow_modality)
    except ApiError as exc:
        _fail(str(exc))
    click.echo(f"job {job['id']}: {job['counts']['total']} scans queued")
    for skipped in job.get("skipped", []):
        click.echo(f"  skipped {skipped['filename']}: {skipped['reason']}", err=True)
    if not wait:
        click.echo(job["id"])
        return
    job = _follow(client, job["id"], poll)
    _print_summary(client, job, table)
    if job["status"] == JobStatus.FAILED:
        sys.exit(1)


def _follow(client, job_id: str, poll: float) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("classifying", total=None)
        while True:
            job = client.job(job_id)
            counts = job["counts"]
            progress.update(
                task,
                total=counts["total"],
                completed=counts["succeeded"] + counts["failed"] + counts.get("cancelled", 0),
                description=job["status"],
            )
            if job["status"] in JobStatus.finished():
                return job
            time.sleep(poll)


MAX_FAILURES_SHOWN = 20


def _print_summary(client, job: dict[str, Any], full_table: bool = False) -> None:
    """Counts, the failed scans with their reasons, and where the rest is.

    Every row only with ``full_table``: a 5,000-slice job is read from a file, not a screen.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = list(client.results(job["id"]))
    if full_table:
        table = Table(title=f"job {job['id']}: {job['status']}")
        for column in ("filename", "status", "P(COVID)", "label", "error"):
            table.add_column(column)
        for row in rows:
            p = row["probability_covid"]
            table.add_row(
                row["filename"],
                row["status"],
                "" if p is None else f"{p:.4f}",
                row["label"] or "",
                row["error"] or "",
            )
        console.print(table)
    else:
        console.print(f"job {job['id']}: {job['status']}")
    counts = job["counts"]
    console.print(
        f"{counts['succeeded']} succeeded, {counts['failed']} failed of {counts['total']}"
        + (f", {counts['cancelled']} cancelled" if counts.get("cancelled") else "")
    )
    labels = Counter(row["label"] for row in rows if row["status"] == ScanStatus.SUCCEEDED)
    if labels:
        console.print("labels: " + ", ".join(f"{name} {n}" for name, n in labels.most_common()))
    failed = [row for row in rows if row["status"] == ScanStatus.FAILED]
    if failed and not full_table:
        console.print("failed scans:", markup=False)
        for row in failed[:MAX_FAILURES_SHOWN]:
            console.print(
                f"  {row['filename']}: {row['error']}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if len(failed) > MAX_FAILURES_SHOWN:
            console.print(f"  … and {len(failed) - MAX_FAILURES_SHOWN} more")
    if not full_table:
        console.print(
            f"every result: covidscan results {job['id']} --csv > results.csv "
            "(or --table to print them here)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    model = job.get("model") or {}
    if model and not model.get("trained", True):
        console.print("[bold red]untrained model: these probabilities mean nothing[/]")


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.pass_context
def jobs(ctx: click.Context, limit: int) -> None:
    """Your most recent jobs, newest first: id, status, counts, model, name."""
    from cli.client import ApiError

    try:
        found = _client(ctx).jobs(limit)
    except ApiError as exc:
        _fail(str(exc))
    if not found:
        click.echo("no jobs")
    for job in found:
        counts, model = job["counts"], job.get("model") or {}
        click.echo(
            f"{job['id']}  {job['created_at'][:19]}  {job['status']:<19}  "
            f"{counts['succeeded']}/{counts['total']} succeeded, {counts['failed']} failed  "
            f"{(model.get('name') or '-')}  {job.get('name') or ''}".rstrip()
        )


@main.command()
@click.argument("job_id")
@click.pass_context
def status(ctx: click.Context, job_id: str) -> None:
    """Show a job's status and counts as JSON."""
    import json

    from cli.client import ApiError

    try:
        click.echo(json.dumps(_client(ctx).job(job_id), indent=2))
    except ApiError as exc:
        _fail(str(exc))


@main.command()
@click.argument("job_id")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of JSON lines.")
@click.pass_context
def results(ctx: click.Context, job_id: str, as_csv: bool) -> None:
    """Print a job's results (JSON, one object a line, or CSV)."""
    import json

    from cli.client import ApiError

    client = _client(ctx)
    try:
        if as_csv:
            click.echo(client.results_csv(job_id), nl=False)
            return
        for row in client.results(job_id):
            click.echo(json.dumps(row))
    except ApiError as exc:
        _fail(str(exc))


@main.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: waiting scans never run, running ones finish, results are kept."""
    from cli.client import ApiError

    try:
        job = _client(ctx).cancel(job_id)
    except ApiError as exc:
        _fail(str(exc))
    counts = job["counts"]
    click.echo(
        f"job {job_id}: {job['status']} ({counts['cancelled']} cancelled, "
        f"{counts['running']} still running, {counts['succeeded']} succeeded)"
    )


@main.command()
@click.argument("job_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def delete(ctx: click.Context, job_id: str, yes: bool) -> None:
    """Delete a job with its results and uploaded slices, for good."""
    from cli.client import ApiError

    if not yes:
        click.confirm(f"delete job {job_id}, its results and its uploaded slices?", abort=True)
    try:
        _client(ctx).delete(job_id)
    except ApiError as exc:
        _fail(str(exc))
    click.echo(f"job {job_id} deleted")


@main.command()
@click.option("--once", is_flag=True, help="One pass, then exit (default: every SWEEP_INTERVAL).")
@click.option(
    "--health-file",
    type=click.Path(path_type=Path),
    help="Touched after every pass that succeeded (for a container healthcheck).",
)
def sweep(once: bool, health_file: Optional[Path]) -> None:
    """Recover expired leases, send waiting wake-ups, delete expired jobs and orphan blobs.

    Every worker runs this on a timer; run it by hand to do it now (it talks to
    DATABASE_URL, REDIS_URL and the blob store directly, not to the API).
    """
    import logging

    from core.sweep import SweepLoop, SweepReport, sweep_once
    from core.wakeups import WakeupSender
    from covidscan.settings import ConfigError, load_settings
    from db.blobs import open_blob_store
    from db.session import make_engine, make_session_factory

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    sessions = make_session_factory(make_engine(settings.database_url))
    sender = WakeupSender(settings.redis_url)
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)

    def run() -> SweepReport:
        return sweep_once(sessions, blobs, sender, settings, send_deliveries=sender.deliver)

    if once:
        report = run()
        click.echo(" ".join(f"{key}={value}" for key, value in vars(report).items()))
        return
    from core.metrics import serve

    try:
        serve(settings, "sweep")  # what it recovers (METRICS_PORT; 0: off)
    except OSError as exc:
        _fail(f"cannot serve metrics on METRICS_PORT: {exc}")
    click.echo(f"sweeping every {settings.sweep_interval} s; Ctrl-C stops")
    with contextlib.suppress(KeyboardInterrupt):
        SweepLoop(run, settings.sweep_interval).run(
            after_pass=health_file.touch if health_file else lambda: None
        )


@main.command()
def migrate() -> None:
    """Apply database migrations to DATABASE_URL, create BLOB_STORE's bucket when it is
    missing, then register MODEL_PATH when it is set.

    Run before the API starts, so that no job is accepted while the configured model is
    still unregistered.
    """
    from covidscan.settings import ConfigError, load_settings
    from db import migrate as migrations

    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    migrations.upgrade(settings.database_url)
    click.echo("database is up to date")
    if settings.blob_store is not None:
        from db.s3_blobs import S3BlobStore

        created = S3BlobStore(settings.blob_store).ensure_bucket()
        click.echo(f"bucket {settings.blob_store.bucket} {'created' if created else 'exists'}")
    if settings.model_path is None:
        return
    from models.loader import ModelLoadError
    from worker.registration import register_configured_model

    try:
        model = register_configured_model(settings)
    except ModelLoadError as exc:
        _fail(f"MODEL_PATH: {exc}")
    assert model is not None, "MODEL_PATH is set, so it is registered"
    click.echo(
        f"MODEL_PATH is registered as {model.ref}{' (the default)' if model.is_default else ''}"
    )


@main.command()
def openapi() -> None:
    """Print the API's OpenAPI 3.1 document (`make openapi` writes docs/openapi.json)."""
    from api.openapi import spec_text

    click.echo(spec_text(), nl=False)


@main.command()
def conformance() -> None:
    """Print the DICOM Conformance Statement (`make conformance` writes docs/conformance.md)."""
    from dicomnet.conformance import statement

    click.echo(statement(), nl=False)


@main.command()
def run() -> None:
    """Start the whole stack on this machine (what `make run` does)."""
    from devtools import devstack

    sys.exit(devstack.main())


main.add_command(keys)
main.add_command(destinations)
main.add_command(exports)
main.add_command(dicom_listen)
main.add_command(models)
main.add_command(pull)
main.add_command(train)
main.add_command(evaluate)

if __name__ == "__main__":
    main()

"""The ``covidscan`` command: submit jobs, follow them, read results, run the stack."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from covidscan.cli_keys import keys
from covidscan.cli_models import models
from covidscan.cli_train import evaluate, train

DEFAULT_URL = "http://127.0.0.1:5000"
FINISHED = ("succeeded", "partially_succeeded", "failed")


def _client(ctx: click.Context):
    from covidscan.client import Client
    from covidscan.settings import client_api_key

    return Client(ctx.obj["url"], api_key=client_api_key())


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group()
@click.option("--url", envvar="COVIDSCAN_URL", default=DEFAULT_URL, show_default=True,
              help="The covidscan server (or COVIDSCAN_URL). The API key comes from "
                   "COVIDSCAN_API_KEY, else the file make run saved (API_KEY_FILE, "
                   "default var/api-key).")
@click.pass_context
def main(ctx: click.Context, url: str) -> None:
    """Bulk COVID-19 classification of chest CT slices."""
    ctx.ensure_object(dict)["url"] = url


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--name", help="A name for the job.")
@click.option("--model", help="NAME or NAME:VERSION of a registered model (default: the default).")
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar until it ends.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between status polls.")
@click.pass_context
def submit(ctx: click.Context, paths: tuple[Path, ...], name: Optional[str],
           model: Optional[str], wait: bool, poll: float) -> None:
    """Upload PNG/JPEG slices, folders of them, or ZIP archives as one job."""
    from covidscan.client import ApiError, collect_files

    files = collect_files(list(paths))
    if not files:
        _fail("no PNG, JPEG or ZIP files found in " + ", ".join(map(str, paths)))
    root = paths[0] if len(paths) == 1 and paths[0].is_dir() else None
    client = _client(ctx)
    try:
        job = client.submit(files, name=name, root=root, model=model)
    except ApiError as exc:
        _fail(str(exc))
    click.echo(f"job {job['id']}: {job['counts']['total']} scans queued")
    for skipped in job.get("skipped", []):
        click.echo(f"  skipped {skipped['filename']}: {skipped['reason']}", err=True)
    if not wait:
        click.echo(job["id"])
        return
    job = _follow(client, job["id"], poll)
    _print_summary(client, job)
    if job["status"] == "failed":
        sys.exit(1)


def _follow(client, job_id: str, poll: float) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, \
        TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task("classifying", total=None)
        while True:
            job = client.job(job_id)
            counts = job["counts"]
            progress.update(task, total=counts["total"],
                            completed=counts["succeeded"] + counts["failed"],
                            description=job["status"])
            if job["status"] in FINISHED:
                return job
            time.sleep(poll)


def _print_summary(client, job: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"job {job['id']}: {job['status']}")
    for column in ("filename", "status", "P(COVID)", "label", "error"):
        table.add_column(column)
    for row in client.results(job["id"]):
        p = row["probability_covid"]
        table.add_row(row["filename"], row["status"], "" if p is None else f"{p:.4f}",
                      row["label"] or "", row["error"] or "")
    console = Console()
    console.print(table)
    counts = job["counts"]
    console.print(f"{counts['succeeded']} succeeded, {counts['failed']} failed of {counts['total']}")
    model = job.get("model") or {}
    if model and not model.get("trained", True):
        console.print("[bold red]untrained model: these probabilities mean nothing[/]")


@main.command()
@click.argument("job_id")
@click.pass_context
def status(ctx: click.Context, job_id: str) -> None:
    """Show a job's status and counts as JSON."""
    import json

    from covidscan.client import ApiError

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

    from covidscan.client import ApiError

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
def migrate() -> None:
    """Apply database migrations to DATABASE_URL, then register MODEL_PATH when it is set.

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
    if settings.model_path is None:
        return
    from covidscan.registration import register_configured_model
    from models.loader import ModelLoadError

    try:
        model = register_configured_model(settings)
    except ModelLoadError as exc:
        _fail(f"MODEL_PATH: {exc}")
    click.echo(f"MODEL_PATH is registered as {model.ref}"
               f"{' (the default)' if model.is_default else ''}")


@main.command()
def run() -> None:
    """Start the whole stack on this machine (what `make run` does)."""
    from covidscan import devstack

    sys.exit(devstack.main())


main.add_command(keys)
main.add_command(models)
main.add_command(train)
main.add_command(evaluate)

if __name__ == "__main__":
    main()

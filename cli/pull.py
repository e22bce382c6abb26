"""``covidscan pull``: retrieve a cohort from a registered PACS and classify it.

The accession numbers stay on this side: the server answers each item by its index in the
list sent, and this command prints them beside the outcomes from its own list.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Optional

import click

HEADERS = {"accessionnumber": "accession", "studyinstanceuid": "study-uid"}


def read_list(path: Path) -> tuple[Optional[str], list[str]]:
    """The identifiers in ``path`` (CSV or text, the first column of each line, blank lines
    skipped) and the kind its header names (``accession`` or ``study-uid``), if it has one.

    Raises:
        click.BadParameter: the file cannot be read, or holds no identifier.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--from-file") from None
    values = [row[0].strip() for row in rows]
    kind = HEADERS.get(values[0].replace(" ", "").lower()) if values else None
    if kind is not None:
        values = values[1:]
    if not values:
        raise click.BadParameter(f"{path} holds no identifier", param_hint="--from-file")
    return kind, values


def item_line(identifier: str, item: dict[str, Any]) -> str:
    """One item: the identifier sent (from the local list), its outcome, N of M, the job."""
    parts = [identifier, item["outcome"]]
    if item.get("instances_retrieved") is not None or item.get("instances_expected") is not None:
        retrieved = item.get("instances_retrieved") or 0
        expected = item.get("instances_expected")
        parts.append(f"{retrieved} of {expected if expected is not None else '?'} instances")
    if item.get("job_id"):
        parts.append(f"job {item['job_id']}")
    if item.get("reason"):
        parts.append(f"({item['reason']})")
    return "  ".join(parts)


@click.command()
@click.option("--source", required=True, help="The registered destination to retrieve from.")
@click.option(
    "--accession",
    "mode",
    flag_value="accession",
    help="IDENTIFIERS are accession numbers (the default).",
)
@click.option("--study-uid", "mode", flag_value="study-uid", help="IDENTIFIERS are study UIDs.")
@click.option(
    "--from-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV or text file, one identifier a line; a header line AccessionNumber or "
    "StudyInstanceUID says which they are.",
)
@click.option("--wait", is_flag=True, help="Follow the retrieval until every item has ended.")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between status polls.")
@click.argument("identifiers", nargs=-1)
@click.pass_context
def pull(
    ctx: click.Context,
    source: str,
    mode: Optional[str],
    from_file: Optional[Path],
    wait: bool,
    poll: float,
    identifiers: tuple[str, ...],
) -> None:
    """Retrieve studies from a PACS by accession numbers or study UIDs, each as a job:
    covidscan pull --source NAME --accession A1 A2 … | --study-uid U1 … | --from-file list.csv"""
    from cli.client import ApiError
    from cli.main import _client

    values = [value.strip() for value in identifiers if value.strip()]
    if from_file is not None:
        if values:
            raise click.UsageError("give identifiers or --from-file, not both")
        kind, values = read_list(from_file)
        mode = mode or kind
    if not values:
        raise click.UsageError("give identifiers (--accession A1 A2 …) or --from-file FILE")
    by_accession = (mode or "accession") == "accession"
    client = _client(ctx)
    try:
        retrieval = client.retrieve(
            source,
            accession_numbers=values if by_accession else (),
            study_uids=() if by_accession else values,
        )
        click.echo(f"retrieval {retrieval['id']}: {len(values)} items from {source}")
        said_window = False
        while wait and retrieval["status"] != "done":
            if retrieval["status"] == "waiting_window" and not said_window:
                click.echo(f"waiting for RETRIEVE_WINDOW {retrieval['window']}")
                said_window = True
            time.sleep(poll)
            retrieval = client.retrieval(retrieval["id"])
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    for item in retrieval["items"]:
        click.echo(item_line(values[item["index"]], item))
    if wait and not any(item["outcome"] == "retrieved" for item in retrieval["items"]):
        ctx.exit(1)

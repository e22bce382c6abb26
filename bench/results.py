"""Benchmark results kept in the repository: one JSON file per run in ``bench/results/``.

``make bench`` saves each run here (``python -m bench --save-results``), and the docs'
performance page is made from these files (``render``, called by ``docs/hooks.py``): one
table per kind of machine, its newest run in full, and every run of that kind in one
history table. A file holds:

- ``date`` (ISO 8601) and ``commit`` (the commit the numbers were measured or recorded at);
- ``cpu``: ``model``, ``cpus`` and the ``flags`` that decide which precisions are fast;
- ``command``, ``settings`` (batching) and ``model``;
- ``precisions`` (the table's columns) and ``table``: rows of ``{"row": label, "values": [...]}``
  with one value per precision, as printed;
- optional ``cold_start`` (seconds), ``load_average`` ([before, after]), ``baseline``
  (``model.predict`` fp32 images/s) and ``notes`` (Markdown: what the run showed).

``python -m bench.results var/bench.json`` saves a report ``make bench`` wrote earlier.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = ("date", "cpu", "command", "precisions", "table")
# The history table: a row of the newest table per column, the first number in its cell.
HISTORY = (
    ("engine images/s", "engine on tensors, images/s"),
    ("limit scans/s", "limit 1 / (decode + infer), scans/s"),
    ("one request scans/s", "one request: end-to-end, scans/s (/ limit)"),
    ("in parts scans/s", "open job in parts: end-to-end, scans/s (/ limit)"),
)


def machine_kind(cpu: dict[str, Any]) -> str:
    """What decides the numbers: the vendor, and whether AVX-512 BF16 and AMX are there."""
    model, flags = cpu.get("model", ""), set(cpu.get("flags", ()))
    vendor = "AMD EPYC" if "AMD" in model or "EPYC" in model else "Intel Xeon"
    if "amx_int8" in flags:
        return f"{vendor} with AMX"
    if "avx512_bf16" in flags:
        vnni = " VNNI and" if "avx512_vnni" in flags else ""
        return f"{vendor} with AVX-512{vnni} BF16, no AMX"
    if "avx512f" in flags:
        return f"{vendor} with AVX-512, no BF16"
    return f"{vendor} without AVX-512"


def load(directory: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every results file, checked for the members a table needs, oldest first."""
    runs = []
    for path in sorted(directory.glob("*.json")):
        run = json.loads(path.read_text())
        missing = [key for key in REQUIRED if key not in run]
        if missing:
            raise ValueError(f"{path.name}: missing {', '.join(missing)}")
        for row in run["table"]:
            if len(row["values"]) != len(run["precisions"]):
                raise ValueError(
                    f"{path.name}: row {row['row']!r} has {len(row['values'])} values "
                    f"for {len(run['precisions'])} precisions"
                )
        run["file"] = path.name
        runs.append(run)
    return sorted(runs, key=lambda run: run["date"])


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _first_number(cell: Any) -> str:
    found = re.search(r"\d+(?:\.\d+)?", str(cell))
    return found.group(0) if found else "–"


def _row(run: dict[str, Any], label: str, precision: str) -> Any:
    for row in run["table"]:
        if row["row"] == label and precision in run["precisions"]:
            return row["values"][run["precisions"].index(precision)]
    return None


def render(runs: list[dict[str, Any]]) -> str:
    """Markdown: per kind of machine, its newest run's table, then every run of that kind."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        kinds.setdefault(machine_kind(run["cpu"]), []).append(run)
    out = []
    newest_first = sorted(kinds.items(), key=lambda item: item[1][-1]["date"], reverse=True)
    for kind, kind_runs in newest_first:
        newest = kind_runs[-1]
        cpu = newest["cpu"]
        out.append(f"## {kind}\n")
        out.append(
            f"The newest run: {newest['date'][:10]}, `{newest['command']}` on "
            f"{cpu['cpus']} cores of {cpu['model']}; CPU flags: "
            f"{' '.join(cpu['flags']) or 'none'}"
            + (
                f" (commit `{newest['commit'][:10]}`, `bench/results/{newest['file']}`)."
                if newest.get("commit")
                else f" (`bench/results/{newest['file']}`)."
            )
            + "\n"
        )
        out.append("| | " + " | ".join(newest["precisions"]) + " |")
        out.append("| --- |" + " --- |" * len(newest["precisions"]))
        for row in newest["table"]:
            out.append(
                f"| {_cell(row['row'])} | " + " | ".join(_cell(v) for v in row["values"]) + " |"
            )
        out.append("")
        cold = newest.get("cold_start")
        if cold:
            out.append(
                f"Cold start: API ready {cold['api_ready_s']} s, a worker ready "
                f"{cold['worker_ready_s']} s, first result {cold['first_result_s']} s.\n"
            )
        out.append("Every run on this kind of machine (int8, the fastest precision that passed):\n")
        out.append(
            "| date | commit | CPU flags | " + " | ".join(name for name, _ in HISTORY) + " | file |"
        )
        out.append("| --- | --- | --- |" + " --- |" * len(HISTORY) + " --- |")
        for run in reversed(kind_runs):
            cells = [_first_number(_row(run, label, "int8")) for _, label in HISTORY]
            if cells[3] == "–":  # runs before open jobs had one end-to-end row
                cells[2] = _first_number(_row(run, "end-to-end, 512 scans, scans/s", "int8"))
            out.append(
                f"| {run['date'][:16].replace('T', ' ')} | `{(run.get('commit') or '–')[:7]}` | "
                f"{' '.join(run['cpu']['flags'])} | " + " | ".join(cells) + f" | `{run['file']}` |"
            )
        out.append("")
        for run in reversed(kind_runs):
            if run.get("notes"):
                title = f"{run['date'][:16].replace('T', ' ')}: {run.get('title', run['file'])}"
                body = "\n".join("    " + line if line else "" for line in run["notes"].split("\n"))
                out.append(f'??? note "{_cell(title)}"\n\n{body}\n')
                if run is not newest:
                    out.append(_full_table(run))
    return "\n".join(out)


def _full_table(run: dict[str, Any]) -> str:
    """An earlier run's own table, folded away under its notes."""
    lines = ["| | " + " | ".join(run["precisions"]) + " |"]
    lines.append("| --- |" + " --- |" * len(run["precisions"]))
    for row in run["table"]:
        lines.append(
            f"| {_cell(row['row'])} | " + " | ".join(_cell(v) for v in row["values"]) + " |"
        )
    body = "\n".join("    " + line for line in lines)
    return f'??? abstract "Its table"\n\n{body}\n'


def _gate(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "none (the reference)"
    parts = gate["parts"].values()
    diffs = " / ".join(f"{part['max_abs_diff']:.1e}" for part in parts)
    return f"{diffs}, {sum(part['label_flips'] for part in parts)}"


def from_report(report: dict[str, Any], commit: str | None, date: str) -> dict[str, Any]:
    """A results file from what ``python -m bench`` wrote (var/bench.json)."""
    summary, settings = report["summary"], report["settings"]
    precisions = list(summary)
    baseline = report["baseline"]["model_predict_fp32_images_per_s"]

    def cpu_in_parts(precision: str) -> str:
        parts = report["precisions"][precision]["bulk_parts"]
        spent = parts["cpu_seconds"]
        named = ", ".join(
            f"{spent[k]:.2f}" for k in ("worker", "api", "bench client") if k in spent
        )
        return f"{named} ({settings['cpus'] * parts['elapsed_s']:.1f})"

    def row(label: str, value) -> dict[str, Any]:
        return {"row": label, "values": [value(p, summary[p]) for p in precisions]}

    table = [
        row("served by", lambda p, s: s["served_by"]),
        row("gate: max |ΔP| per part, flips", lambda p, s: _gate(s["gate"])),
        row("engine on tensors, images/s", lambda p, s: round(s["engine_images_per_s"], 1)),
        row("decode + preprocess, ms/scan", lambda p, s: round(s["decode_ms_per_scan"], 2)),
        row("limit 1 / (decode + infer), scans/s", lambda p, s: round(s["limit_scans_per_s"], 1)),
        row(
            "one request: end-to-end, scans/s (/ limit)",
            lambda p, s: f"{s['end_to_end_scans_per_s']:.1f} ({s['end_to_end_over_limit']:.2f})",
        ),
        row(
            "open job in parts: end-to-end, scans/s (/ limit)",
            lambda p, s: f"{s['in_parts_scans_per_s']:.1f} ({s['in_parts_over_limit']:.2f})",
        ),
        row(
            "engine busy share: one request / in parts",
            lambda p, s: (
                f"{100 * s['engine_busy_fraction']:.0f} % / "
                f"{100 * s['in_parts_engine_busy_fraction']:.0f} %"
            ),
        ),
        row(
            "CPU seconds in parts: worker, API, client (cores × total)",
            lambda p, s: cpu_in_parts(p),
        ),
    ]
    if all("small_jobs_scans_per_s" in s for s in summary.values()):
        table += [
            row(
                "100 one-slice jobs over HTTP: scans/s, fill",
                lambda p, s: (
                    f"{s['small_jobs_scans_per_s']:.1f}, {s['small_jobs_mean_batch_fill']:.2f}"
                ),
            ),
            row(
                "the same, queued first: scans/s, fill",
                lambda p, s: (
                    f"{s['small_jobs_queued_scans_per_s']:.1f}, "
                    f"{s['small_jobs_queued_mean_batch_fill']:.2f}"
                ),
            ),
        ]
    table.append(
        row(
            f"× `model.predict` fp32 ({baseline:.1f} images/s), in parts",
            lambda p, s: round(s["in_parts_over_model_predict_fp32"], 1),
        )
    )
    cold = report.get("cold_start") or {}
    return {
        "date": date,
        "commit": commit,
        "cpu": report["cpu"],
        "command": "python -m bench",
        "settings": {
            "MAX_BATCH_SIZE": settings["max_batch_size"],
            "MAX_QUEUE_DELAY_MS": settings["max_queue_delay_ms"],
            "BATCH_SIZE": settings["chunk_size"],
        },
        "model": report["baseline"]["model"]["name"],
        "precisions": precisions,
        "table": table,
        "cold_start": {k: round(cold[k], 1) for k in cold},
        "load_average": [
            round(report["load_average_before"][0], 1),
            round(report["load_average_after"][0], 1),
        ],
        "baseline": {"model_predict_fp32_images_per_s": round(baseline, 1)},
        "notes": "",
    }


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def save(report: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<date>-<kind>.json`` for this report; returns its path."""
    now = datetime.now(UTC).replace(microsecond=0)
    results = from_report(report, _commit(), now.isoformat())
    slug = re.sub(r"[^a-z0-9]+", "-", machine_kind(report["cpu"]).lower()).strip("-")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{now:%Y-%m-%dT%H%M}-{slug}.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save a bench report into bench/results/.")
    parser.add_argument("report", type=Path, help="what `make bench` wrote (var/bench.json)")
    args = parser.parse_args(argv)
    report = json.loads(args.report.read_text())
    if not report.get("summary"):
        print(f"{args.report}: no precision was measured; nothing to save", file=sys.stderr)
        return 1
    print(f"bench: saved {save(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

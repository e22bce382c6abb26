"""``make bench``: throughput numbers from one run of the real stack.

Starts the stack as ``make run`` does (in var/bench, with its own database and blob
store), submits a bulk job of synthetic 512×512 PNG slices through the HTTP API (in one
request, then as ``covidscan submit`` sends a folder: parts of an open job) and 100
one-slice jobs at once, for each precision, then stops the stack and measures the
engines and the decoding on the same cores. Before the precisions, what explanations
cost (:mod:`bench.explain`): Grad-CAM against fp32 inference per scan, in this process and
through the stack. ``--precisions "" --small-jobs 0`` runs that part alone. Prints a
summary; writes var/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import requests
from celery import Celery
from sqlalchemy import func, select

from bench.engine import cpu_flags
from covidscan.contract import BATCHING_STATS_COMMAND, INFER_QUEUE
from covidscan.settings import Settings, load_settings
from db.models import Scan, ScanStatus
from db.session import make_engine
from devtools.devstack import Stack


class Bench:
    """The running stack, seen through its HTTP API, its database and its worker's counters."""

    def __init__(self, settings: Settings, url: str, stack: Optional[Stack] = None) -> None:
        self.url = url
        self.stack = stack  # whose processes' CPU time timed_case measures
        self.db = make_engine(settings.database_url)
        self.redis_url = os.environ.get("REDIS_URL", "")
        self.control = None
        self.headers = (
            {"Authorization": f"Bearer {settings.api_key_file.read_text().strip()}"}
            if settings.auth_enabled
            else {}
        )

    def submit_as_cli(self, paths: Sequence[Path], precision: str) -> str:
        """As ``covidscan submit`` sends a folder: over 64 files, parts of an open job."""
        from api.schemas import SubmissionOptions
        from cli.client import Client

        key = self.headers.get("Authorization", "").removeprefix("Bearer ") or None
        options = SubmissionOptions(precision=precision)
        return Client(self.url, timeout=600, api_key=key).submit(paths, options)["id"]

    def submit(self, files: Sequence[tuple[str, bytes]], precision: str) -> str:
        parts = [("files", (name, data, "image/png")) for name, data in files]
        response = requests.post(
            f"{self.url}/v1/jobs",
            files=parts,
            headers=self.headers,
            data={"precision": precision},
            timeout=600,
        )
        response.raise_for_status()
        return response.json()["id"]

    def finished_at(self, job_ids: Sequence[str], timeout: float = 1800) -> list[float]:
        """Wait until every scan of the jobs has a result; their finish times (epoch seconds).

        Polls a cheap count, so that the waiting takes little from the cores it measures.
        """
        ids = list(job_ids)
        unfinished = (
            select(func.count())
            .select_from(Scan)
            .where(Scan.job_id.in_(ids), Scan.status.not_in(ScanStatus.terminal()))
        )
        deadline = time.monotonic() + timeout
        while True:
            with self.db.connect() as conn:
                if conn.scalar(unfinished) == 0:
                    rows = conn.execute(
                        select(Scan.finished_at, Scan.status).where(Scan.job_id.in_(ids))
                    ).all()
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished after {timeout} s")
            time.sleep(0.1)
        failed = sum(status == ScanStatus.FAILED for _, status in rows)
        if failed or not rows:
            raise RuntimeError(f"{failed} of {len(rows)} scans failed; see var/bench/stack.log")
        return [
            moment.timestamp()
            for moment, _ in rows
            if moment is not None  # every scan is finished here: none is
        ]

    def engine_of(self, job_id: str) -> tuple[str, str]:
        """The engine and precision that served a finished job's first scan."""
        with self.db.connect() as conn:
            engine, precision = conn.execute(
                select(Scan.engine, Scan.precision).where(Scan.job_id == job_id).limit(1)
            ).one()
        if engine is None or precision is None:
            raise RuntimeError(f"job {job_id}'s first scan names no engine; it has no result")
        return engine, precision

    def _celery(self) -> Celery:
        if self.control is None:
            self.control = Celery("bench", broker=self.redis_url, set_as_current=False)
        return self.control

    def batching(self) -> dict[str, Any]:
        (reply,) = self._celery().control.broadcast(
            BATCHING_STATS_COMMAND, reply=True, timeout=10, limit=1
        )
        return next(iter(reply.values()))

    def hold(self, held: bool) -> None:
        """Stop or resume the worker's consumption of the task queue.

        Stopping waits until the worker has run every task it had already taken: the
        wake-ups Redis handed it ahead of time (prefetched, left from the case before) would
        otherwise still run and take the new scans while they arrive. (Freezing the process
        instead could freeze it inside a SQLite write, and stall the API's writes.)
        """
        control = self._celery().control
        if held:
            control.cancel_consumer(INFER_QUEUE, reply=True, timeout=10, limit=1)
            deadline = time.monotonic() + 60
            while True:
                inspect = control.inspect(timeout=5, limit=1)
                taken = sum(
                    len(tasks)
                    for replies in (inspect.active(), inspect.reserved())
                    for tasks in (replies or {}).values()
                )
                if not taken:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker still runs {taken} tasks after 60 s")
                time.sleep(0.2)
        else:
            control.add_consumer(INFER_QUEUE, reply=True, timeout=10, limit=1)


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """User + system CPU seconds so far of each process of the stack (with its children)
    and of this one, which sends the uploads and polls the database."""
    import psutil

    pids = [(name, process.pid) for name, process in stack.children]
    if stack.redis is not None and stack.redis.process is not None:
        pids.append(("redis", stack.redis.process.pid))
    spent = {}
    for name, pid in pids:
        try:
            root = psutil.Process(pid)
            spent[name] = sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(True)])
        except psutil.Error:
            spent[name] = 0.0
    spent["bench client"] = sum(psutil.Process().cpu_times()[:2])  # not its children: those
    return spent


def batch_delta(before: dict, after: dict) -> dict[str, float]:
    batches = after["batches"] - before["batches"]
    items = after["items"] - before["items"]
    mean = items / batches if batches else 0.0
    return {
        "batches": batches,
        "items": items,
        "mean_batch_size": mean,
        "mean_fill": mean / after["max_batch_size"],
        "engine_busy_s": after["busy_seconds"] - before["busy_seconds"],
    }


def timed_case(bench: Bench, submit_all, held: bool = False) -> dict[str, Any]:
    """Run one case: ``submit_all`` returns job ids; times from its start to the last result.

    ``held``: the worker takes no task during the upload and the clock starts when it
    resumes, so the jobs reach it at once rather than at the API's pace.
    """
    if bench.stack is None:
        raise ValueError("timed_case measures the stack's CPU time: build the Bench with it")
    stack = bench.stack
    before = bench.batching()
    cpu_before = cpu_seconds(stack)
    if held:
        bench.hold(True)
    try:
        started = time.time()
        job_ids = submit_all()
        uploaded = time.time()
    finally:
        if held:
            started = time.time()
            bench.hold(False)
    finished = np.array(bench.finished_at(job_ids))
    cpu = {name: spent - cpu_before.get(name, 0.0) for name, spent in cpu_seconds(stack).items()}
    elapsed = finished.max() - started
    latency = finished - started
    return {
        "scans": len(finished),
        "jobs": len(job_ids),
        "upload_s": uploaded - started,
        "elapsed_s": elapsed,
        "scans_per_s": len(finished) / elapsed,
        "after_upload_scans_per_s": len(finished) / (finished.max() - max(uploaded, started)),
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "engine": "/".join(bench.engine_of(job_ids[0])),
        "cpu_seconds": cpu,  # from the start to this poll, which sees the last result
        **batch_delta(before, bench.batching()),
    }


def first_result(
    bench: Bench, stack: Stack, launched: float, file: tuple[str, bytes]
) -> dict[str, float]:
    """A new user's first job: sent at the API's first ``/readyz``, in the default precision.

    Returns seconds from the start of the stack to the API answering, to a worker being
    ready, and to that job's result.
    """
    while True:
        if stack.exited():
            raise RuntimeError(f"the stack did not start: {stack.exited()}")
        try:
            if requests.get(f"{bench.url}/readyz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    api_ready = time.time()
    job = requests.post(
        f"{bench.url}/v1/jobs",
        files=[("files", (*file, "image/png"))],
        headers=bench.headers,
        timeout=60,
    )
    job.raise_for_status()
    if not stack.wait_ready(900):
        raise RuntimeError("no worker became ready")
    worker_ready = time.time()
    (finished,) = bench.finished_at([job.json()["id"]], timeout=900)
    return {
        "api_ready_s": api_ready - launched,
        "worker_ready_s": worker_ready - launched,
        "first_result_s": finished - launched,
    }


def run(
    settings: Settings,
    var_dir: Path,
    pngs: list[bytes],
    small_jobs: int,
    precisions: Sequence[str],
    explain_scans: int = 0,
) -> dict[str, Any]:
    """Start the stack, warm every precision, then per precision: measure the engine and
    decoding in this process, the bulk job and the one-slice jobs through the stack."""
    url = f"http://127.0.0.1:{settings.port}"
    report: dict[str, Any] = {"load_average_before": os.getloadavg(), "precisions": {}}
    with open(var_dir / "stack.log", "w") as log:
        stack = Stack(settings, output=log)
        try:
            launched = time.time()
            stack.start()  # before TensorFlow is imported here: no forking of a TF process
            if stack.redis is not None:
                os.environ["REDIS_URL"] = stack.redis.url
            bench = Bench(settings, url, stack)
            files = [(f"slice_{i:04d}.png", data) for i, data in enumerate(pngs)]
            folder = var_dir / "slices"
            folder.mkdir()
            for name, data in files:
                (folder / name).write_bytes(data)
            paths = sorted(folder.iterdir())
            report["cold_start"] = first_result(bench, stack, launched, files[0])
            ones = [files[i % len(files)] for i in range(small_jobs)]
            for precision in precisions:
                print(f"bench: warming the worker up in {precision}…", flush=True)
                bench.finished_at([bench.submit(files[:1], precision)])
            from bench.engine import EngineBench

            engines = EngineBench(
                settings.model_path,
                settings.inference_engine,
                settings.max_batch_size,
                settings.engine_cache_dir,
                pngs,
            )
            if explain_scans:
                report["explain"] = explain_cases(bench, engines, files[:explain_scans])
            if precisions:
                print("bench: model.predict fp32 baseline…", flush=True)
                report["baseline"] = engines.baseline()
            for precision in precisions:
                print(f"bench: {precision}: engine on tensors, decoding…", flush=True)
                measured = {"engine": engines.measure(precision)}
                print(f"bench: {precision}: bulk job of {len(files)} scans…", flush=True)
                measured["bulk"] = timed_case(
                    bench, lambda precision=precision: [bench.submit(files, precision)]
                )
                print(
                    f"bench: {precision}: the same folder sent by covidscan submit "
                    "(an open job, part by part)…",
                    flush=True,
                )
                measured["bulk_parts"] = timed_case(
                    bench, lambda precision=precision: [bench.submit_as_cli(paths, precision)]
                )
                if small_jobs:
                    measured.update(small_job_cases(bench, ones, precision))
                report["precisions"][precision] = measured
        finally:
            stack.stop()
    report["load_average_after"] = os.getloadavg()
    return report


def small_job_cases(
    bench: Bench, ones: Sequence[tuple[str, bytes]], precision: str
) -> dict[str, Any]:
    """One-slice jobs from 8 client threads at once; then the same queued while the worker
    is held."""
    measured = {}
    print(f"bench: {precision}: {len(ones)} one-slice jobs at once…", flush=True)
    with ThreadPoolExecutor(8) as pool:

        def submit_ones() -> list[str]:
            return list(pool.map(lambda f: bench.submit([f], precision), ones))

        measured["small_jobs"] = timed_case(bench, submit_ones)
        print(f"bench: {precision}: the same, queued before the worker takes them…", flush=True)
        measured["small_jobs_queued"] = timed_case(bench, submit_ones, held=True)
    return measured


def explain_cases(bench: Bench, engines, files) -> dict[str, Any]:
    """Explanations against plain fp32 inference, in this process and through the stack."""
    from bench import explain

    print("bench: explanations: Grad-CAM and fp32 inference on tensors…", flush=True)
    local = explain.in_process(engines.model, engines.batch_size, [data for _, data in files])
    print(f"bench: explanations: {len(files)} scans without, then with, explanations…", flush=True)
    return {"in_process": local, "stack": explain.through_the_stack(bench, files)}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Per precision: the limit 1 / (decode + infer per scan) and end-to-end / limit."""
    summary = {}
    for precision, cases in report["precisions"].items():
        engine, bulk = cases["engine"], cases["bulk"]
        parts = cases["bulk_parts"]
        raw = engine["images_per_s"]
        decode = engine["decode"]["pool_s_per_scan"]
        limit = 1.0 / (decode + 1.0 / raw)
        summary[precision] = {
            "served_by": bulk["engine"],
            "gate": engine["gate"],
            "note": engine["note"],
            "end_to_end_scans_per_s": bulk["scans_per_s"],
            "engine_images_per_s": raw,
            "decode_ms_per_scan": 1000 * decode,
            "infer_ms_per_scan": 1000 / raw,
            "limit_scans_per_s": limit,
            "end_to_end_over_limit": bulk["scans_per_s"] / limit,
            "after_upload_over_limit": bulk["after_upload_scans_per_s"] / limit,
            "in_parts_scans_per_s": parts["scans_per_s"],
            "in_parts_over_limit": parts["scans_per_s"] / limit,
            "in_parts_over_model_predict_fp32": parts["scans_per_s"]
            / report["baseline"]["model_predict_fp32_images_per_s"],
            "in_parts_engine_busy_fraction": parts["engine_busy_s"] / parts["elapsed_s"],
            "engine_busy_fraction": bulk["engine_busy_s"] / bulk["elapsed_s"],
            "mean_batch_fill": bulk["mean_fill"],
            "latency_p50_s": bulk["latency_p50_s"],
            "latency_p95_s": bulk["latency_p95_s"],
            "over_model_predict_fp32": bulk["scans_per_s"]
            / report["baseline"]["model_predict_fp32_images_per_s"],
        }
        if "small_jobs" in cases:  # not with --small-jobs 0
            summary[precision].update(
                {
                    "small_jobs_scans_per_s": cases["small_jobs"]["scans_per_s"],
                    "small_jobs_mean_batch_fill": cases["small_jobs"]["mean_fill"],
                    "small_jobs_queued_scans_per_s": cases["small_jobs_queued"]["scans_per_s"],
                    "small_jobs_queued_mean_batch_fill": cases["small_jobs_queued"]["mean_fill"],
                }
            )
    return summary


def print_summary(report: dict[str, Any]) -> None:
    cpu = report["cpu"]
    print(f"\nCPU {cpu['model']}, {cpu['cpus']} cores; flags: {' '.join(cpu['flags']) or 'none'}")
    cold = report["cold_start"]
    print(
        f"cold start: API ready {cold['api_ready_s']:.1f} s, a worker ready "
        f"{cold['worker_ready_s']:.1f} s, first result {cold['first_result_s']:.1f} s "
        "after the stack was started (first job sent at the API's first /readyz)"
    )
    if "explain" in report:
        from bench.explain import print_explain

        print_explain(report["explain"])
    if "baseline" not in report:
        return
    base = report["baseline"]
    trained = "trained" if base["model"]["trained"] else "untrained"
    print(
        f"\nmodel {base['model']['name']} ({trained}); "
        f"model.predict fp32 baseline {base['model_predict_fp32_images_per_s']:.1f} images/s; "
        f"TensorFlow fp32 engine {base['tensorflow_fp32_images_per_s']:.1f} images/s; "
        f"load average {report['load_average_before'][0]:.1f} before, "
        f"{report['load_average_after'][0]:.1f} after"
    )
    for precision, s in report["summary"].items():
        bulk = report["precisions"][precision]["bulk"]
        gate = s["gate"]
        verdict = (
            "no gate (the fp32 reference)"
            if gate is None
            else f"gate {'passed' if gate['passed'] else 'FAILED'}: "
            + "; ".join(
                f"{name} max |ΔP| {part['max_abs_diff']:.1e} ≤ {part['tolerance']:.0e}, "
                f"{part['label_flips']} flips"
                for name, part in gate["parts"].items()
            )
        )
        print(f"\n[{precision}] served by {s['served_by']} ({s['note']}); {verdict}")
        print(
            f"  end-to-end   {s['end_to_end_scans_per_s']:7.1f} scans/s  "
            f"({bulk['scans']} scans, upload {bulk['upload_s']:.2f} s, "
            f"total {bulk['elapsed_s']:.2f} s)"
        )
        print(
            f"  engine raw   {s['engine_images_per_s']:7.1f} images/s  "
            f"({s['infer_ms_per_scan']:.2f} ms/scan); "
            f"decode+preprocess {s['decode_ms_per_scan']:.2f} ms/scan"
        )
        print(
            f"  limit        {s['limit_scans_per_s']:7.1f} scans/s   end-to-end/limit "
            f"{s['end_to_end_over_limit']:.2f}   "
            f"×{s['over_model_predict_fp32']:.1f} model.predict fp32"
        )
        print(
            f"  after upload {bulk['after_upload_scans_per_s']:7.1f} scans/s   /limit "
            f"{s['after_upload_over_limit']:.2f}; "
            f"engine busy {100 * s['engine_busy_fraction']:.0f}% of the end-to-end time"
        )
        parts = report["precisions"][precision]["bulk_parts"]
        print(
            f"  in parts     {s['in_parts_scans_per_s']:7.1f} scans/s   /limit "
            f"{s['in_parts_over_limit']:.2f}   ×{s['in_parts_over_model_predict_fp32']:.1f} "
            f"model.predict fp32 (covidscan submit: an open job, sent in "
            f"{parts['upload_s']:.2f} s; engine busy "
            f"{100 * s['in_parts_engine_busy_fraction']:.0f}%)"
        )
        for label, case in (("one request", bulk), ("in parts", parts)):
            cpu = case["cpu_seconds"]
            cpus = report["settings"]["cpus"]
            print(
                f"  CPU seconds, {label}: "
                + ", ".join(f"{name} {spent:.2f}" for name, spent in cpu.items())
                + f" (of {cpus * case['elapsed_s']:.2f} on {cpus} cores)"
            )
        print(
            f"  batches      mean fill {s['mean_batch_fill']:.2f}; latency p50 "
            f"{s['latency_p50_s']:.2f} s, p95 {s['latency_p95_s']:.2f} s"
        )
        small = report["precisions"][precision].get("small_jobs")
        if small is None:
            continue
        print(
            f"  {small['jobs']} one-slice jobs at once: {s['small_jobs_scans_per_s']:.1f} scans/s, "
            f"mean fill {s['small_jobs_mean_batch_fill']:.2f} (API took {small['upload_s']:.2f} s "
            f"to accept them); queued first: {s['small_jobs_queued_scans_per_s']:.1f} scans/s, "
            f"mean fill {s['small_jobs_queued_mean_batch_fill']:.2f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=512, help="slices in the bulk job")
    parser.add_argument("--small-jobs", type=int, default=100, help="one-slice jobs sent at once")
    parser.add_argument(
        "--precisions",
        default="fp32,bf16,int8,auto",
        help="comma-separated; empty measures nothing but what else is asked",
    )
    parser.add_argument(
        "--explain-scans",
        type=int,
        default=64,
        help="slices in the with/without explanations case (0: skip it)",
    )
    parser.add_argument(
        "--out", type=Path, help="the report (default COVIDSCAN_VAR_DIR/bench.json)"
    )
    parser.add_argument(
        "--save-results",
        action="store_true",
        help="also save the run into bench/results/ (the docs' performance tables)",
    )
    args = parser.parse_args(argv)
    from models.synthetic import png_slice

    base = load_settings()
    var_dir = base.var_dir / "bench"
    args.out = args.out or base.var_dir / "bench.json"
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    settings = base.with_overrides(
        var_dir=var_dir,
        database_url=f"sqlite:///{var_dir / 'bench.db'}",
        blob_dir=var_dir / "blobs",
        port=base.port + 100,
        api_key_file=var_dir / "api-key",
    )
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    print(f"bench: making {args.scans} synthetic 512×512 PNG slices…", flush=True)
    pngs = [png_slice(512, seed=i) for i in range(args.scans)]
    report = run(settings, var_dir, pngs, args.small_jobs, precisions, args.explain_scans)
    report["cpu"] = cpu_flags()
    report["settings"] = {
        "max_batch_size": settings.max_batch_size,
        "max_queue_delay_ms": settings.max_queue_delay_ms,
        "worker_concurrency": settings.worker_concurrency,
        "chunk_size": settings.batch_size,
        "cpus": os.cpu_count(),
    }
    report["summary"] = summarise(report) if precisions else {}
    print_summary(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nbench: wrote {args.out}")
    if args.save_results and report["summary"]:
        from bench.results import save

        print(f"bench: saved {save(report)} (add its notes, commit it; make docs shows it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

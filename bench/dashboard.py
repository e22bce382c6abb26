"""``python -m bench.dashboard``: the covidscan dashboard's main panels, drawn from real metrics.

Starts the stack as ``make run`` does (in var/dashboard; the untrained default model
unless MODEL_PATH is set), sends three jobs of synthetic slices (a few undecodable) at
three priorities through the HTTP API, scrapes the API's ``/metrics`` and the worker's
``METRICS_PORT`` every few seconds until they end, and draws with matplotlib the series
the Grafana dashboard (docker/grafana/dashboards/covidscan.json) queries, computed the
way PromQL's ``rate()`` and ``histogram_quantile()`` compute them. Grafana is not involved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

from covidscan.settings import load_settings
from devtools.devstack import Stack
from devtools.scrape import Sample, parse, value

Scrape = tuple[float, list[Sample], list[Sample]]  # time, API samples, worker samples
JOBS = (("normal", 240, 4, 0.0), ("high", 60, 0, 25.0), ("low", 120, 2, 45.0))
"""Priority, slices, undecodable slices, seconds after the start it is sent."""
WINDOW_S = 30.0
API, WORKER = 1, 2
"""A scrape's sides: the API's samples, the worker's."""


def quantile(q: float, buckets: dict[float, float]) -> float:
    """``histogram_quantile``: linear within the bucket holding the q-th observation."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(buckets[upper] - below, 1e-12)
        lower, below = upper, buckets[upper]
    return lower


def buckets_of(samples: list[Sample], name: str) -> dict[float, float]:
    found: dict[float, float] = {}
    for sample_name, labels, count in samples:
        if sample_name == f"{name}_bucket":
            le = float(labels["le"])
            found[le] = found.get(le, 0.0) + count
    return found


def side_of(scrape: Scrape, side: int) -> list[Sample]:
    return scrape[1] if side == API else scrape[2]


class Series:
    """Values over time from a list of scrapes."""

    def __init__(self, scrapes: list[Scrape]) -> None:
        self.scrapes = scrapes
        self.t0 = scrapes[0][0]

    def _pairs(self, window: float):
        for i, (t, api, worker) in enumerate(self.scrapes[1:], 1):
            j = max(k for k in range(i) if k == 0 or self.scrapes[k][0] <= t - window)
            yield t - self.t0, (self.scrapes[j], (t, api, worker))

    def rate(self, side: int, name: str, **labels: str):
        return zip(
            *[
                (
                    t,
                    (value(b[side], name, **labels) - value(a[side], name, **labels))
                    / (b[0] - a[0]),
                )
                for t, (a, b) in self._pairs(0)
            ]
        )

    def gauge(self, side: int, name: str, **labels: str):
        return zip(
            *[(s[0] - self.t0, value(side_of(s, side), name, **labels)) for s in self.scrapes]
        )

    def ratio(self, side: int, name: str):
        def mean(a, b):
            count = value(b[side], f"{name}_count") - value(a[side], f"{name}_count")
            total = value(b[side], f"{name}_sum") - value(a[side], f"{name}_sum")
            return total / count if count else float("nan")

        return zip(*[(t, mean(a, b)) for t, (a, b) in self._pairs(WINDOW_S)])

    def quantile(self, side: int, name: str, q: float):
        def one(a, b):
            before, after = buckets_of(a[side], name), buckets_of(b[side], name)
            return (
                quantile(q, {le: after[le] - before.get(le, 0.0) for le in after})
                if after
                else float("nan")
            )

        return zip(*[(t, one(a, b)) for t, (a, b) in self._pairs(WINDOW_S)])


def draw(scrapes: list[Scrape], out: Path) -> None:
    from matplotlib.figure import Figure

    series = Series(scrapes)
    figure = Figure(figsize=(15, 8.5), facecolor="#111217")
    axes = figure.subplots(2, 3)
    panels: list[tuple[str, str, Callable]] = [
        (
            "Throughput",
            "scans/s",
            lambda ax: (
                [
                    ax.plot(
                        *series.rate(WORKER, "covidscan_scans_classified_total", status=s), label=s
                    )
                    for s in ("succeeded", "failed")
                ]
                + [
                    ax.plot(
                        *series.rate(API, "covidscan_scans_submitted_total"),
                        label="submitted",
                        linestyle=":",
                    )
                ]
            ),
        ),
        (
            "Queue (from SQL)",
            "scans",
            lambda ax: (
                [
                    ax.plot(
                        *series.gauge(API, "covidscan_scans_waiting", priority=p),
                        label=f"waiting {p}",
                    )
                    for p in ("high", "normal", "low")
                ]
                + [
                    ax.plot(
                        *series.gauge(API, "covidscan_scans_leased"), label="leased", linestyle=":"
                    )
                ]
            ),
        ),
        (
            "Batch fill (mean, 30 s)",
            "fill ratio",
            lambda ax: ax.plot(
                *series.ratio(WORKER, "covidscan_batch_fill_ratio"), label="scans / MAX_BATCH_SIZE"
            ),
        ),
        (
            "End-to-end latency per scan (30 s)",
            "seconds",
            lambda ax: [
                ax.plot(
                    *series.quantile(WORKER, "covidscan_scan_latency_seconds", q),
                    label=f"p{round(q * 100)}",
                )
                for q in (0.5, 0.95, 0.99)
            ],
        ),
        (
            "Stage latency p95 (30 s)",
            "seconds",
            lambda ax: [
                ax.plot(*series.quantile(WORKER, f"covidscan_{stage}_seconds", 0.95), label=stage)
                for stage in ("decode", "batch_wait", "inference", "write")
            ],
        ),
        (
            "Errors",
            "per second",
            lambda ax: [
                ax.plot(
                    *series.rate(WORKER, "covidscan_scans_classified_total", status="failed"),
                    label="scans failed",
                ),
                ax.plot(
                    *series.rate(WORKER, "covidscan_batch_failures_total"),
                    label="model calls failed",
                ),
                ax.plot(
                    *series.rate(
                        API, "covidscan_http_request_duration_seconds_count", status="500"
                    ),
                    label="HTTP 500",
                ),
            ],
        ),
    ]
    for ax, (title, unit, plot) in zip(axes.flat, panels):
        ax.set_facecolor("#181b1f")
        plot(ax)
        ax.set_title(title, color="#d8d9da", loc="left", fontsize=11)
        ax.set_ylabel(unit, color="#8e8e8e")
        ax.set_xlabel("seconds", color="#8e8e8e")
        ax.tick_params(colors="#8e8e8e")
        ax.grid(color="#2c3235")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.legend(fontsize=8, facecolor="#181b1f", labelcolor="#d8d9da", edgecolor="#2c3235")
    figure.suptitle(
        "covidscan: the dashboard's panels drawn with matplotlib from scraped "
        "metrics (not a Grafana screenshot)",
        color="#d8d9da",
    )
    figure.tight_layout()
    figure.savefig(out, dpi=80, facecolor=figure.get_facecolor())


def scrape(api: str, key: str, worker: str) -> Scrape:
    answer = requests.get(api, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    answer.raise_for_status()
    return time.time(), parse(answer.text), parse(requests.get(worker, timeout=10).text)


def run(
    stack: Stack, interval: float, slices: Callable[[int], bytes], broken: Callable[[], bytes]
) -> list[Scrape]:
    url = stack.base_url
    key = stack.settings.api_key_file.read_text().strip()
    worker = f"http://127.0.0.1:{stack.metrics_ports['worker']}/metrics"
    scrapes, sent, jobs = [], 0, []
    start = time.time()
    while True:
        scrapes.append(scrape(f"{url}/metrics", key, worker))
        while sent < len(JOBS) and time.time() - start >= JOBS[sent][3]:
            priority, count, bad, _ = JOBS[sent]
            files = [("files", (f"s{i}.png", slices(i))) for i in range(count - bad)]
            files += [("files", (f"broken{i}.png", broken())) for i in range(bad)]
            answer = requests.post(
                f"{url}/v1/jobs",
                files=files,
                data={"priority": priority},
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            answer.raise_for_status()
            jobs.append(answer.json()["id"])
            sent += 1
        waiting = value(scrapes[-1][1], "covidscan_scans_waiting") + value(
            scrapes[-1][1], "covidscan_scans_leased"
        )
        if sent == len(JOBS) and not waiting and len(scrapes) > 3:
            break
        time.sleep(interval)
    for _ in range(int(WINDOW_S // interval) + 1):  # the windows empty out
        time.sleep(interval)
        scrapes.append(scrape(f"{url}/metrics", key, worker))
    return scrapes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between scrapes")
    parser.add_argument("--out", type=Path, default=Path("docs/images/dashboard.png"))
    args = parser.parse_args(argv)
    from models.synthetic import corrupt_png, png_slice

    base = load_settings()
    var_dir = base.var_dir / "dashboard"
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    settings = base.with_overrides(
        var_dir=var_dir,
        database_url=f"sqlite:///{var_dir / 'dashboard.db'}",
        blob_dir=var_dir / "blobs",
        port=base.port + 200,
        api_key_file=var_dir / "api-key",
    )
    with open(var_dir / "stack.log", "w") as log:
        stack = Stack(settings, output=log)
        try:
            stack.start()
            if not stack.wait_ready(900):
                raise RuntimeError(f"the stack did not start; see {var_dir / 'stack.log'}")
            print("dashboard: stack ready; sending jobs and scraping…", flush=True)
            scrapes = run(
                stack, args.interval, lambda i: png_slice(256, seed=i), lambda: corrupt_png(256)
            )
        finally:
            stack.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(scrapes, args.out)
    print(
        f"dashboard: {len(scrapes)} scrapes over {scrapes[-1][0] - scrapes[0][0]:.0f} s; "
        f"wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

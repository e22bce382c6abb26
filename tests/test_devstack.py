"""`make run`'s stack: it starts, serves a job end to end with MODEL_PATH even when the job
is sent the moment the API answers, and Ctrl-C leaves nothing running."""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis
import requests

from devtools.embedded_redis import free_port
from devtools.scrape import parse, value
from models.loader import file_sha256
from tests.conftest import ROOT
from tests.images import corrupt_png, write_folder
from tests.original_app import original_probabilities

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_local_stack_serves_a_job_and_stops_cleanly_on_sigint(tmp_path, tiny_model_path):
    slices = write_folder(tmp_path / "slices", 4, size=48)
    port, dicom_port = free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BLOB_DIR")
    }
    env.update(
        PORT=str(port),
        DICOM_PORT=str(dicom_port),
        COVIDSCAN_VAR_DIR=str(tmp_path / "var"),
        MODEL_PATH=str(tiny_model_path),
        PYTHONPATH=str(ROOT),
    )
    log = open(tmp_path / "stack.log", "w")
    stack = subprocess.Popen(
        [sys.executable, "-m", "devtools.devstack"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready():
            try:
                return requests.get(f"{base}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 120, "the API to be ready")
        key_file = tmp_path / "var" / "api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert key in (tmp_path / "stack.log").read_text()  # printed once, at the first start
        auth = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{base}/v1/jobs", timeout=5).status_code == 401
        # The embedded Redis requires the password made on first start and kept in var/.
        password_file = tmp_path / "var" / "redis-password"
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        password = password_file.read_text().strip()
        redis_port = int(
            re.search(
                r"127\.0\.0\.1:(\d+)/0",
                wait_until(
                    lambda: (
                        "embedded Redis on" in (tmp_path / "stack.log").read_text()
                        and (tmp_path / "stack.log").read_text()
                    ),
                    30,
                    "the Redis line",
                ),
            ).group(1)
        )
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        assert redis.Redis(port=redis_port, password=password).ping()
        # Submitted the moment the API is ready, before the worker has loaded anything.
        files = [("files", (path.name, path.read_bytes())) for path in slices]
        files.append(("files", ("broken.png", corrupt_png())))
        job = requests.post(f"{base}/v1/jobs", files=files, headers=auth, timeout=30).json()
        final = wait_until(
            lambda: (lambda b: b if b["status"] not in ("queued", "running") else None)(
                requests.get(f"{base}/v1/jobs/{job['id']}", headers=auth, timeout=5).json()
            ),
            180,
            "the job to finish",
        )
        assert final["status"] == "partially_succeeded"
        assert final["counts"]["succeeded"] == 4
        rows = requests.get(f"{base}/v1/jobs/{job['id']}/results", headers=auth, timeout=5).json()[
            "results"
        ]
        assert (tmp_path / "var" / "covidscan.db").exists()
        # Each process's metrics where the banner says; the job counted once, by status.
        banner = wait_until(
            lambda: re.findall(
                r"(http://127\.0\.0\.1:\d+/metrics) \((\w+)\)", (tmp_path / "stack.log").read_text()
            ),
            30,
            "the metrics lines",
        )
        urls = {name: url for url, name in banner}
        assert set(urls) == {"worker", "sweep", "dicom"}
        worker_metrics = parse(requests.get(urls["worker"], timeout=5).text)
        assert (
            value(
                worker_metrics,
                "covidscan_scans_classified_total",
                model="tiny_ct",
                status="succeeded",
            )
            == 4
        )
        assert (
            value(worker_metrics, "covidscan_jobs_finished_total", status="partially_succeeded")
            == 1
        )
        assert requests.get(urls["sweep"], timeout=5).status_code == 200
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 401
        api_metrics = parse(requests.get(f"{base}/metrics", headers=auth, timeout=5).text)
        assert value(api_metrics, "covidscan_scans_submitted_total", priority="normal") == 5
        from dicomnet.probe import echo

        dicom_echo = wait_until(
            lambda: (lambda r: r if r.ok else None)(echo("127.0.0.1", dicom_port, "COVIDSCAN")),
            60,
            "the DICOM listener to answer C-ECHO",
        )
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 3  # redis-server, worker, gunicorn (+ its workers)
        # The banner follows the worker's readiness; the job may finish before it is polled.
        wait_until(
            lambda: "covidscan is running" in (tmp_path / "stack.log").read_text(),
            30,
            "the start-up banner",
        )
    finally:
        stack.send_signal(signal.SIGINT)
        code = stack.wait(120)
        log.close()
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]
    assert password not in (tmp_path / "stack.log").read_text()  # never printed nor logged
    still_running = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert still_running == []
    output = (tmp_path / "stack.log").read_text()
    assert "covidscan is running" in output
    assert f"DICOM: COVIDSCAN@127.0.0.1:{dicom_port}" in output
    assert dicom_echo.ok, dicom_echo.message  # the gateway answered while the stack ran
    # The banner waits for a worker whose model is warm, not only for the API.
    assert output.index("is ready: its default model is warm") < output.index(
        "covidscan is running"
    )
    # MODEL_PATH served every scan, as the original app would have scored it.
    assert final["model"] == {
        "name": "tiny_ct",
        "version": final["model"]["version"],
        "sha256": file_sha256(tiny_model_path),
        "trained": True,
    }
    reference = original_probabilities(tiny_model_path, slices)
    scored = {r["filename"]: r for r in rows if r["status"] == "succeeded"}
    assert set(scored) == set(reference)
    for name, row in scored.items():
        assert (row["model_name"], row["model_sha256"]) == ("tiny_ct", final["model"]["sha256"])
        assert abs(row["probability_covid"] - reference[name]) <= 1e-4, (name, row, reference)


def test_a_model_path_that_does_not_load_stops_the_local_stack_before_anything_starts(tmp_path):
    not_a_model = tmp_path / "resnet_ct.h5"
    not_a_model.write_bytes(b"not an HDF5 file")
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BLOB_DIR")
    }
    env.update(
        PORT=str(free_port()),
        COVIDSCAN_VAR_DIR=str(tmp_path / "var"),
        MODEL_PATH=str(not_a_model),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-m", "devtools.devstack"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"covidscan: MODEL_PATH: {not_a_model}: cannot load" in done.stderr
    assert "covidscan is running" not in done.stdout
    assert not (tmp_path / "var" / "redis").exists()  # nothing was started

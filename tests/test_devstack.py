"""`make run`'s stack: it starts, serves a job end to end, and Ctrl-C leaves nothing running."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import requests

from covidscan.embedded_redis import free_port
from tests.conftest import ROOT
from tests.images import corrupt_png, png_bytes

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
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "BLOB_DIR")}
    env.update(PORT=str(port), COVIDSCAN_VAR_DIR=str(tmp_path / "var"),
               MODEL_PATH=str(tiny_model_path), PYTHONPATH=str(ROOT))
    log = open(tmp_path / "stack.log", "w")
    stack = subprocess.Popen([sys.executable, "-m", "covidscan.devstack"], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
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
        files = [("files", (f"s{i}.png", png_bytes(48, i))) for i in range(4)]
        files.append(("files", ("broken.png", corrupt_png())))
        job = requests.post(f"{base}/v1/jobs", files=files, headers=auth, timeout=30).json()
        final = wait_until(
            lambda: (lambda b: b if b["status"] not in ("queued", "running") else None)(
                requests.get(f"{base}/v1/jobs/{job['id']}", headers=auth, timeout=5).json()),
            180, "the job to finish")
        assert final["status"] == "partially_succeeded"
        assert final["counts"]["succeeded"] == 4
        assert (tmp_path / "var" / "covidscan.db").exists()
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 3  # redis-server, worker, gunicorn (+ its workers)
    finally:
        stack.send_signal(signal.SIGINT)
        code = stack.wait(120)
        log.close()
    assert code == 0, (tmp_path / "stack.log").read_text()[-3000:]
    still_running = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert still_running == []
    assert "covidscan is running" in (tmp_path / "stack.log").read_text()

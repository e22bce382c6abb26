"""Ctrl-C during `covidscan train` keeps the best epoch so far, registered and usable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.blob_data import write_blob_dataset
from tests.conftest import ROOT, fresh_database_url

pytestmark = pytest.mark.integration


def test_sigint_after_an_epoch_registers_the_best_model_so_far(tmp_path):
    data = write_blob_dataset(tmp_path / "data", 12, size=32)
    env = {
        **os.environ,
        "DATABASE_URL": fresh_database_url(tmp_path),
        "MODEL_STORE_DIR": str(tmp_path / "store"),
        "MODEL_PATH": "",
        "PYTHONPATH": str(ROOT),
    }
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "train",
        str(data),
        "--epochs",
        "500",
        "--patience",
        "500",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--name",
        "stopped",
        "--version",
        "1",
        "--output",
        str(run),
    ]
    with open(tmp_path / "train.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not (run / "best.weights.h5").exists():
                assert process.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no epoch finished in 180 s"
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            code = process.wait(180)
        finally:
            if process.poll() is None:
                process.kill()
    output = (tmp_path / "train.log").read_text()
    assert code == 0, output[-3000:]
    assert "interrupted: keeping the best epoch so far" in output
    assert "registered stopped:1" in output
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["interrupted"] is True
    assert 1 <= report["training"]["epochs_run"] < 500
    assert "random initialisation" in report["model_card"]["training"]["base_weights"]

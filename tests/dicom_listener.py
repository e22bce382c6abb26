"""``covidscan dicom-listen`` as a real process on a free loopback port, for the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from devtools.embedded_redis import free_port
from tests.conftest import ROOT


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until something listens on ``port``; fails with the listener's output if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"dicom-listen exited: {output}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("dicom-listen did not start listening")


@contextmanager
def dicom_listener(
    config: dict[str, str], owner: str = "radiology", ae_title: str = "COVIDSCAN"
) -> Iterator[int]:
    """Run the listener with ``config`` (the app's environment); yields its port."""
    port = free_port()
    env = {**os.environ, **config, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "dicom-listen",
        "--port",
        str(port),
        "--ae-title",
        ae_title,
        "--owner",
        owner,
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)

"""OpenVINO's tools and NNCF send nothing out of a covidscan process, and fork no child.

Both libraries send usage events to Google Analytics by default, each from a child
process forked off the caller, and a service holding patient data must not call out.
The check runs in a fresh interpreter without CI variables (which the libraries also
honour), so it proves what the product does, not what the test environment does.
"""

import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import os, sys, threading, time
forks = []
os.register_at_fork(before=lambda: forks.append(threading.current_thread().name))
import models.openvino_engine
import openvino, nncf
from openvino.tools.ovc import telemetry_utils
import nncf.telemetry.wrapper as nncf_telemetry
time.sleep(1.0)  # the libraries send from a thread of their own
print(telemetry_utils.tm.__name__, type(nncf_telemetry.telemetry).__name__, forks)
"""


def test_openvino_and_nncf_send_no_telemetry_and_fork_nothing():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ovc_module, nncf_kind, forks = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert ovc_module == "openvino.tools.ovc.telemetry_stub"
    assert nncf_kind != "NNCFTelemetry"
    assert forks == "[]"

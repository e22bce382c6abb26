"""dicom3tools' ``dciodvfy``: every DICOM object the tests make is checked against its IOD."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def require_dciodvfy() -> str:
    """The validator's path; skip without it, or fail in CI (CI=true), so it is never silent."""
    found = shutil.which("dciodvfy")
    if found:
        return found
    reason = "DICOM conformance checks need dciodvfy: apt-get install dicom3tools"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def iod_errors(raw: bytes) -> list[str]:
    """The ``Error`` lines dciodvfy reports for a Part 10 object (warnings are not errors)."""
    validator = require_dciodvfy()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "object.dcm"
        path.write_bytes(raw)
        result = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]

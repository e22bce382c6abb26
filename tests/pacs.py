"""A real PACS for the tests: Debian's Orthanc (with its DICOMweb plugin) on free ports.

Orthanc 1.10 cannot choose the address it listens on, so remote access is switched off
and the tests talk to it on 127.0.0.1 only. Its binary is run directly with a
configuration of the test's own (not the system service), in a temporary folder that
holds its database and storage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_available() -> bool:
    return Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()


class Orthanc:
    """One Orthanc process; ``modalities`` maps a name to ``(ae_title, port)`` on 127.0.0.1.

    ``check_called_aet``: refuse associations addressed to another AE title than its own.
    ``users``: user -> password; HTTP (REST and DICOMweb) then needs basic auth, and the
    helpers below send the first user's.
    """

    def __init__(
        self,
        folder: Path,
        http_port: int,
        dicom_port: int,
        modalities: Optional[dict[str, tuple[str, int]]] = None,
        ae_title: str = "ORTHANC",
        check_called_aet: bool = False,
        users: Optional[dict[str, str]] = None,
    ) -> None:
        self.folder, self.http_port, self.dicom_port = folder, http_port, dicom_port
        self.ae_title = ae_title
        self.check_called_aet = check_called_aet
        self.users = users or {}
        self.auth = next(iter(self.users.items())) if self.users else None
        self.url = f"http://127.0.0.1:{http_port}"
        self.log_path = folder / "orthanc.log"
        self._modalities = modalities or {}
        self._process: Optional[subprocess.Popen] = None

    def config(self) -> dict[str, Any]:
        return {
            "Name": "covidscan-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                name: [aet, "127.0.0.1", port] for name, (aet, port) in self._modalities.items()
            },
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
        }

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("w")
        self._process = subprocess.Popen(
            [ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=2, auth=self.auth).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer on its HTTP port")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.folder / "storage", ignore_errors=True)

    # REST helpers
    def get(self, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("auth", self.auth)
        response = requests.get(f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body) if body is not None else b""
        kwargs.setdefault("auth", self.auth)
        return requests.post(f"{self.url}{path}", data=data, timeout=120, **kwargs)

    def upload(self, instance: bytes) -> dict[str, Any]:
        """Store one Part 10 instance in Orthanc (as a modality would); its ids."""
        response = self.post("/instances", instance)
        response.raise_for_status()
        return response.json()

    def echo(self, modality: str) -> requests.Response:
        """Orthanc's "test this modality": a C-ECHO to it."""
        return self.post(f"/modalities/{modality}/echo", {})

    def send(self, modality: str, resources: list[str]) -> requests.Response:
        """C-STORE these Orthanc resources (studies, series or instances) to a modality."""
        return self.post(
            f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": True}
        )


def require_orthanc() -> None:
    """Skip when Orthanc is missing; in CI (CI=true) fail instead, so it is never silent."""
    if orthanc_available():
        return
    import os

    import pytest

    reason = (
        f"PACS test needs {ORTHANC} and {DICOMWEB_PLUGIN}: apt-get install orthanc orthanc-dicomweb"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)

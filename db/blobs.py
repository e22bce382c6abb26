"""Blob store for uploaded scan bytes: a directory shared by the API and the workers."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from db.paths import path_under


class BlobNotFound(FileNotFoundError):
    """The bytes of a scan are missing from the blob store."""


class BlobStore:
    """Stores bytes under ``<root>/<job_id>/<name>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def key_for(self, job_id: str, position: int) -> str:
        return f"{job_id}/{position:06d}"

    def _path(self, key: str) -> Path:
        return path_under(self.root, key, "blob key")

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"uploaded bytes are missing from the blob store ({key})") from None

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._path(job_id), ignore_errors=True)

    def job_dirs_older_than(self, seconds: float) -> list[str]:
        """Job ids with a folder here last modified more than ``seconds`` ago."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - seconds
        found = []
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(entry.name)
                except FileNotFoundError:  # deleted meanwhile
                    continue
        return found

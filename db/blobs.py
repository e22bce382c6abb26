"""Blob stores for scan bytes and what is derived from them (thumbnails and the like).

One interface, two implementations: :class:`FileBlobStore` (a directory, ``BLOB_DIR``) and
:class:`db.s3_blobs.S3BlobStore` (an S3-compatible bucket, ``BLOB_STORE=s3://BUCKET/PREFIX``).
Every key starts with the job id, ``<job_id>/<name>``: deleting a job deletes that prefix,
the sealed patient attributes of its studies (``<job_id>/patient/<study_uid>.sealed``) included.
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from covidscan.s3_location import S3Location
from db.paths import path_under

_UID = re.compile(r"[0-9]{1,64}(\.[0-9]{1,64})*")
PATIENT_FOLDER = "patient"


def is_uid(value: str) -> bool:
    """Whether ``value`` is a DICOM UID's shape (digits in dot-separated parts, at most 64
    characters): safe in a key, never ``.`` or ``..``."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


class BlobNotFound(FileNotFoundError):
    """The bytes of a scan are missing from the blob store."""


class BlobStore(abc.ABC):
    """Bytes by key; keys are ``<job_id>/<name>``, written whole (a reader never sees half)."""

    fetch_concurrency = 1
    """Readers per core that keep a reader of many keys busy (more for a store over a network)."""

    def key_for(self, job_id: str, position: int) -> str:
        return f"{job_id}/{position:06d}"

    def part_key(self, job_id: str, part: str, index: int) -> str:
        """The key of a file of a part added to an open job: unique before the part's
        scans have positions."""
        return f"{job_id}/{part}-{index:06d}"

    def patient_key(self, job_id: str, study_uid: str) -> str:
        """The key of a study's sealed patient attributes in the job (:mod:`core.patient`).

        Raises:
            ValueError: ``study_uid`` is not a UID.
        """
        if not is_uid(study_uid):
            raise ValueError("a Study Instance UID is digits and dots, at most 64 characters")
        return f"{job_id}/{PATIENT_FOLDER}/{study_uid}.sealed"

    @staticmethod
    def job_of(key: str) -> str:
        """The job whose prefix ``key`` is under."""
        return key.partition("/")[0]

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    @abc.abstractmethod
    def get(self, key: str, length: Optional[int] = None) -> bytes:
        """The bytes under ``key`` (only the first ``length`` when given).

        Raises:
            BlobNotFound: nothing is stored under ``key``.
        """

    def copy(self, source: str, target: str) -> None:
        """Store under ``target`` the bytes under ``source`` as they are now.

        Raises:
            BlobNotFound: nothing is stored under ``source``.
        """
        self.put(target, self.get(source))

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """How many bytes are stored under ``key``. Raises BlobNotFound."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; a missing key is not an error."""

    @abc.abstractmethod
    def keys(self, job_id: str) -> list[str]:
        """Every key of a job, sorted."""

    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Delete every key of a job."""

    @abc.abstractmethod
    def job_ids_older_than(self, seconds: float) -> list[str]:
        """Job ids that have blobs here, none of them written in the last ``seconds``."""

    def upload_url(self, key: str, size: int, expires: int) -> Optional[str]:
        """A URL a client can PUT ``size`` bytes to for ``key``, or None if the store
        takes bytes only through the API."""
        return None

    def problem(self) -> Optional[str]:
        """Why the store cannot take uploads now (for ``/readyz``), or None when it can."""
        return None


class FileBlobStore(BlobStore):
    """Stores bytes under ``<root>/<job_id>/<name>``, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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

    def get(self, key: str, length: Optional[int] = None) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                return handle.read() if length is None else handle.read(length)
        except FileNotFoundError:
            raise BlobNotFound(f"uploaded bytes are missing from the blob store ({key})") from None

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"uploaded bytes are missing from the blob store ({key})") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, job_id: str) -> list[str]:
        folder = self._path(job_id)
        if not folder.is_dir():
            return []
        return sorted(
            f"{job_id}/{p.relative_to(folder).as_posix()}"
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".upload-")
        )

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._path(job_id), ignore_errors=True)

    def job_ids_older_than(self, seconds: float) -> list[str]:
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


def open_blob_store(blob_dir: Path, s3: Optional[S3Location]) -> BlobStore:
    """The S3 store when ``s3`` is set (``BLOB_STORE``), else the directory ``blob_dir``."""
    if s3 is None:
        return FileBlobStore(blob_dir)
    from db.s3_blobs import S3BlobStore

    return S3BlobStore(s3)

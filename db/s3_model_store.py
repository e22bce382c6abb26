"""The model store mirrored to the S3 bucket of ``BLOB_STORE``: a worker needs no shared folder.

Objects are ``<prefix>models/<name>/<version>/<path under the model's folder>``, one per
file (a SavedModel directory is several). The local ``MODEL_STORE_DIR`` is a cache: a model
is uploaded after its local copy succeeds, fetched whole into a host that lacks it (into a
hidden staging folder, checked, then renamed into place, so a crash leaves nothing half
written), and deleted from both on removal. A file written later beside a model (its
calibration set) is published with :meth:`MirroredModelStore.put_beside` and fetched again
by any host whose copy is missing or older.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from db.blobs import S3Location
from db.model_store import ModelStore
from db.paths import path_under
from db.s3_blobs import MODELS_FOLDER, S3BlobStore

log = logging.getLogger(__name__)


class MirroredModelStore(ModelStore):
    """A :class:`ModelStore` whose folders are also kept as objects in a bucket."""

    def __init__(self, root: Path, location: S3Location) -> None:
        super().__init__(root)
        self.bucket = S3BlobStore(location)
        self.prefix = f"{location.prefix}{MODELS_FOLDER}/"

    def _folder_key(self, relative: str) -> str:
        folder = self.path(relative).parent.relative_to(self.root)
        return f"{self.prefix}{folder.as_posix()}/"

    def _objects(self, relative: str) -> dict[str, dict]:
        """The model folder's objects by path relative to the folder."""
        start = self._folder_key(relative)
        return {o["Key"][len(start) :]: o for o in self.bucket.objects(start)}

    def _upload(self, relative: str, local: Path) -> None:
        folder = self.path(relative).parent
        name = local.relative_to(folder).as_posix()
        self.bucket.s3.upload_file(
            str(local), self.bucket.bucket, self._folder_key(relative) + name
        )

    def put(self, source: Path, name: str, version: str) -> str:
        """Copy in locally, then upload every file of the folder.

        Raises:
            FileExistsError: the name and version are stored here or in the bucket.
        """
        relative = self.relative_path(Path(source), name, version)
        if self._objects(relative):
            raise FileExistsError(
                f"{self.bucket.location.url}{MODELS_FOLDER}/{name}/{version} "
                "already exists in the model store"
            )
        relative = super().put(source, name, version)
        # Only what this call copied in: another process may already be writing beside it
        # (a worker storing its calibration set), and such a file must not fail the upload.
        stored = self.path(relative)
        files = (
            [stored] if stored.is_file() else sorted(p for p in stored.rglob("*") if p.is_file())
        )
        try:
            for path in files:
                self._upload(relative, path)
        except BaseException:
            self.delete(relative)
            raise
        return relative

    def put_beside(self, relative: str, name: str) -> None:
        self._upload(relative, path_under(self.path(relative).parent, name, "file beside a model"))

    def delete(self, relative: str) -> None:
        super().delete(relative)
        keys = [o["Key"] for o in self._objects(relative).values()]
        self.bucket.delete_keys(keys, f"model {self.path(relative).parent.relative_to(self.root)}")

    def resolve(self, relative: str, verify: Optional[Callable[[Path], None]] = None) -> Path:
        """Fetch the model's folder when this host lacks it (``verify`` checks the fetched
        model before it takes its place), and files added beside it since; returns the
        local path."""
        path = self.path(relative)
        folder = path.parent
        objects = self._objects(relative)
        if not objects:
            return path  # not in the bucket (stored before BLOB_STORE was set): local only
        if not folder.exists():
            self._fetch_folder(relative, objects, verify)
        else:
            self._fetch_newer(relative, objects)
        return path

    def _download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.bucket.s3.download_file(self.bucket.bucket, key, str(target))

    def _fetch_folder(
        self, relative: str, objects: dict[str, dict], verify: Optional[Callable[[Path], None]]
    ) -> None:
        folder = self.path(relative).parent
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".fetching-"))
        try:
            for name, obj in objects.items():
                target = path_under(staging, name, "stored model object")
                self._download(obj["Key"], target)
                _match_mtime(target, obj)
            if verify is not None:
                verify(staging / self.path(relative).name)
            try:
                staging.rename(folder)
            except OSError:
                if not folder.exists():
                    raise
                # another process on this host fetched it first; theirs is as good as ours
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("fetched model %s from %s", relative, self.bucket.location.url)

    def _fetch_newer(self, relative: str, objects: dict[str, dict]) -> None:
        """Files beside the model added or replaced in the bucket since this copy was made;
        the model itself is not replaced (its SHA-256 is checked when it loads)."""
        folder = self.path(relative).parent
        model_entry = self.path(relative).name
        for name, obj in objects.items():
            if name.split("/", 1)[0] == model_entry:
                continue
            target = path_under(folder, name, "stored model object")
            try:
                stat = target.stat()
                if stat.st_size == obj["Size"] and stat.st_mtime >= obj["LastModified"].timestamp():
                    continue
            except FileNotFoundError:
                pass
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetching-")
            os.close(fd)
            try:
                self._download(obj["Key"], Path(tmp))
                _match_mtime(Path(tmp), obj)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)


def _match_mtime(path: Path, obj: dict) -> None:
    """A fetched file takes the object's time, so a later upload is seen as newer."""
    when = obj["LastModified"].timestamp()
    os.utime(path, (when, when))

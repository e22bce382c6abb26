"""The model store: a directory, shared by the CLI and the workers, holding registered files.

A registered model lives at ``<root>/<name>/<version>/<original file or directory name>``;
the registry records that path relative to the root, so the store can be mounted
anywhere as long as ``MODEL_STORE_DIR`` points at it. Files written later beside a model
(its calibration set) go in the same ``<name>/<version>`` folder.

With ``BLOB_STORE`` set, :func:`open_model_store` returns
:class:`db.s3_model_store.MirroredModelStore`: the folder is then a cache of the bucket,
so a worker on another host needs no shared folder.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from db.blobs import S3Location
from db.paths import path_under

SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_part(what: str, value: str) -> str:
    """Model names and versions become folder names: letters, digits, ``.``, ``_``, ``-``."""
    if not SAFE_PART.match(value):
        raise ValueError(
            f"{what} {value!r} must start with a letter or digit and hold only "
            "letters, digits, '.', '_' and '-' (at most 100 characters)"
        )
    return value


class ModelStore:
    """Copies model files in, resolves recorded paths, deletes them on removal."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, relative: str) -> Path:
        return path_under(self.root, relative, "stored model path")

    def resolve(self, relative: str, verify: Optional[Callable[[Path], None]] = None) -> Path:
        """The local path of a stored model, fetched first where the store is mirrored.

        ``verify`` is called on a fetched copy before it takes the model's place (it raises
        to refuse it); a folder store fetches nothing, so it is not called here.
        """
        return self.path(relative)

    def put_beside(self, relative: str, name: str) -> None:
        """Publish the file ``name`` written into a stored model's folder (a folder store
        has nothing more to do)."""
        path_under(self.path(relative).parent, name, "file beside a model")

    def relative_path(self, source: Path, name: str, version: str) -> str:
        """Where :meth:`put` stores ``source`` under ``name`` and ``version``."""
        folder = f"{check_part('model name', name)}/{check_part('version', version)}"
        return f"{folder}/{Path(source).name}"

    def put(self, source: Path, name: str, version: str) -> str:
        """Copy a file or SavedModel directory in; returns its path relative to the root.

        Raises:
            FileExistsError: something is already stored under that name and version.
        """
        source = Path(source)
        relative = self.relative_path(source, name, version)
        folder = self.path(relative).parent
        if folder.exists():
            raise FileExistsError(f"{folder} already exists in the model store")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".adding-"))
        try:
            if source.is_dir():
                shutil.copytree(source, staging / source.name)
            else:
                shutil.copy2(source, staging / source.name)
            staging.rename(folder)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if folder.exists():  # another process stored the same name and version first
                raise FileExistsError(f"{folder} already exists in the model store") from exc
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return relative

    def delete(self, relative: str) -> None:
        """Remove a stored model's folder (``<name>/<version>``) and, when empty, its name."""
        folder = self.path(relative).parent
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the name still has other versions
            folder.parent.rmdir()


def open_model_store(root: Path, s3: Optional[S3Location]) -> ModelStore:
    """The folder ``root`` (``MODEL_STORE_DIR``), mirrored to the bucket when ``s3`` is set
    (``BLOB_STORE``)."""
    if s3 is None:
        return ModelStore(root)
    from db.s3_model_store import MirroredModelStore

    return MirroredModelStore(root, s3)

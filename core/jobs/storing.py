"""Storing a job's files before its rows, and deleting them when the rows are not written.

Files go to the blob store first (a worker must find the bytes of any scan it can lease);
the job's rows follow in one transaction. Whatever stops the rows (a refused file later in
the upload, a quota, a lost database) deletes the files this request stored, here.
A DICOM file's sealed patient and study attributes are stored with it, once per study of
the job (:func:`core.patient.keep_patient`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Optional, Protocol, TypeVar

from core.patient import PatientKeeper, SealedPatient
from db.blobs import BlobStore
from db.jobs import NewScan

log = logging.getLogger(__name__)


class HasData(Protocol):
    """A checked upload: the bytes of one file to store and, for DICOM, its patient and
    study attributes sealed (e.g. :class:`core.intake.ScanUpload`)."""

    @property
    def data(self) -> bytes: ...

    @property
    def patient(self) -> Optional[SealedPatient]: ...


Upload = TypeVar("Upload", bound=HasData)


def store_uploads(
    blobs: BlobStore,
    uploads: Iterable[Upload],
    key_of: Callable[[int], str],
    scans_of: Callable[[Upload, str], list[NewScan]],
    job_id: Optional[str] = None,
) -> list[NewScan]:
    """Store each checked upload (``.data``) under ``key_of(index)``, and the sealed
    patient attributes of each study not yet in the job; the scans the uploads hold.

    ``uploads`` may be a generator that checks as it goes: an error from it, or from the
    store, deletes what was stored (with ``job_id``, a new job's whole prefix) and goes on.
    """
    keys: list[str] = []
    patients = PatientKeeper(blobs)
    new_scans: list[NewScan] = []
    try:
        for upload in uploads:
            key = key_of(len(keys))
            keys.append(key)
            blobs.put(key, upload.data)  # once per file: a multi-frame file's frames share it
            new_scans.extend(scans_of(upload, key))
            if upload.patient is not None:
                patients.keep(job_id or blobs.job_of(key), upload.patient)
    except BaseException:
        discard(blobs, keys + patients.stored, job_id)
        raise
    return new_scans


def discard(blobs: BlobStore, keys: Sequence[str], job_id: Optional[str] = None) -> None:
    """Delete stored files whose rows were not written: ``keys``, or with ``job_id`` every
    file of that new job. A failure is logged, never raised over the error that led here
    (the sweep deletes files without rows later)."""
    try:
        if job_id is not None:
            blobs.delete_job(job_id)
        else:
            for key in dict.fromkeys(keys):
                blobs.delete(key)
    except Exception as exc:
        log.warning(
            "files of a refused upload not deleted (the sweep will): %s: %s",
            type(exc).__name__,
            exc,
        )


def scan_keys(new_scans: Sequence[NewScan]) -> list[str]:
    """The distinct blob keys of ``new_scans`` (a multi-frame file's frames share one)."""
    return list(dict.fromkeys(s.blob_key for s in new_scans))

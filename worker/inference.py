"""Classify leased scans: decode in a pool, infer in the batcher, one outcome per scan.

A drain (:mod:`worker.drain`) decodes its leased scans in the shared pool and hands each
tensor to the process's batcher as soon as it is ready, so decoding overlaps inference
and scans of several drains share model batches.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from typing import Optional, Protocol

import numpy as np

from covidscan.dicom_pixels import MAX_INFLATED_BYTES
from db.blobs import BlobNotFound, BlobStore
from db.scans import ScanOutcome
from worker.batching import DynamicBatcher
from worker.metrics import DECODE, timed

log = logging.getLogger(__name__)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class ScanInput(Protocol):
    """What classifying a scan needs (a :class:`db.scans.Lease` is one); read only."""

    @property
    def scan_id(self) -> str: ...
    @property
    def blob_key(self) -> str: ...
    @property
    def frame(self) -> Optional[int]: ...  # of a multi-frame DICOM file; None otherwise


def predict_items(engine, tensors: Sequence[np.ndarray]) -> list:
    """The batcher's batch function: one P(positive) or one error per tensor, in order.

    A tensor of the wrong shape, or holding NaN or infinity, gets its own error; the others
    still run as one batch.
    """
    expected = (*engine.info.input_size, 3)
    good = [i for i, t in enumerate(tensors) if t.shape == expected and np.isfinite(t).all()]
    results: list = [
        ValueError(f"expected a preprocessed tensor of shape {expected}, got {t.shape}")
        if t.shape != expected
        else ValueError("the preprocessed tensor holds NaN or infinite values")
        for t in tensors
    ]
    if good:
        probabilities = engine.predict(np.stack([tensors[i] for i in good]))
        for index, p in zip(good, probabilities):
            results[index] = float(p)
    return results


class FrameFiles:
    """Reads scan bytes; a multi-frame file's bytes are kept for its other frames in the
    batch (at most ``keep`` files at once), so a file is read once, not once per frame.
    ``max_bytes`` bounds how far a Deflated DICOM file may inflate (``MAX_SCAN_BYTES``)."""

    def __init__(
        self, blobs: BlobStore, keep: int = 2, max_bytes: int = MAX_INFLATED_BYTES
    ) -> None:
        self.blobs = blobs
        self.keep = keep
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item: ScanInput) -> bytes:
        if getattr(item, "frame", None) is None:
            return self.blobs.get(item.blob_key)
        with self._lock:
            if item.blob_key in self._files:
                self._files.move_to_end(item.blob_key)
                return self._files[item.blob_key]
        data = self.blobs.get(item.blob_key)
        with self._lock:
            self._files[item.blob_key] = data
            while len(self._files) > self.keep:
                self._files.popitem(last=False)
        return data


def load_tensor(files: FrameFiles, item: ScanInput, info) -> tuple[np.ndarray | str, Optional[str]]:
    """The tensor (or the reason there is none) and, for a DICOM slice, the preprocessing id
    naming its window (``info`` is the engine's :class:`models.loader.ModelInfo`).

    Whatever goes wrong reading, decoding, windowing or preprocessing this one scan is its
    own failure, never its batch's: a known fault with its reason, anything else named by
    its type only (a message from a decoder may quote the file's values).
    """
    from covidscan.dicom_pixels import is_dicom
    from models.dicom import load_dicom_seed_v1, preprocessing_id
    from models.preprocess import ImageDecodeError, load_seed_v1

    preprocessing = None
    with timed(DECODE):
        try:
            data = files.get(item)
        except BlobNotFound as exc:
            return str(exc), None
        except Exception as exc:
            log.warning("scan %s: reading its bytes failed (%s)", item.scan_id, type(exc).__name__)
            return f"could not read the scan's bytes ({type(exc).__name__})", None
        try:
            if is_dicom(data):
                preprocessing = preprocessing_id(info.dicom_window, info.preprocessing)
                return load_dicom_seed_v1(
                    data,
                    getattr(item, "frame", None) or 0,
                    info.dicom_window,
                    info.input_size,
                    files.max_bytes,
                ), preprocessing
            return load_seed_v1(data, info.input_size), None
        except ImageDecodeError as exc:
            return str(exc), preprocessing
        except Exception as exc:
            log.warning("scan %s: decoding failed (%s)", item.scan_id, type(exc).__name__)
            return (
                f"could not decode the scan: {type(exc).__name__} while reading, "
                f"windowing or preprocessing it"
            ), preprocessing


def _infer(
    items: Sequence[ScanInput],
    files: FrameFiles,
    engine,
    pool: Optional[Executor],
    batcher: Optional[DynamicBatcher],
) -> tuple[list, list[Optional[str]]]:
    """One decode error (str), P(positive) (float) or future of it per item, and each item's
    own preprocessing id (None: the model's)."""
    info = engine.info
    loaded: list[object]
    if pool is None:
        pairs = [load_tensor(files, item, info) for item in items]
        loaded = [value for value, _ in pairs]
        preprocessing = [how for _, how in pairs]
    else:
        decoding = [pool.submit(load_tensor, files, item, info) for item in items]
        loaded, preprocessing = [], []
        for future in decoding:  # each tensor goes to the batcher as soon as it is decoded
            value, how = future.result()
            if batcher is not None and not isinstance(value, str):
                loaded.append(batcher.submit(engine, value))
            else:
                loaded.append(value)
            preprocessing.append(how)
    if batcher is None:
        tensors = {i: value for i, value in enumerate(loaded) if isinstance(value, np.ndarray)}
        if tensors:
            predicted = predict_items(engine, list(tensors.values()))
            for index, p in zip(tensors, predicted):
                loaded[index] = p
    return loaded, preprocessing


def failure_reason(text: str, limit: int = 1000) -> str:
    """A scan's error as stored: control characters (a NUL, which PostgreSQL refuses and
    which would fail the whole batch's write, CR, LF…) as spaces, at most ``limit``
    characters. Decoders' messages may carry bytes of the file."""
    text = CONTROL_CHARACTERS.sub(" ", text).strip() or "the scan failed"
    return text if len(text) <= limit else text[:limit] + "…"


def classify_batch(
    items: Sequence[ScanInput],
    blobs: BlobStore,
    engine,
    pool: Optional[Executor] = None,
    batcher: Optional[DynamicBatcher] = None,
    max_scan_bytes: int = MAX_INFLATED_BYTES,
) -> list[ScanOutcome]:
    """Decode, preprocess and classify; one outcome per item, same length and order.

    With a ``pool`` and a ``batcher``, decoding runs in the pool and inference in the
    batcher's batches; without, both run here. A scan that cannot be read or decoded
    (whatever the error; a Deflated DICOM file inflating past ``max_scan_bytes`` too),
    or that gets a non-finite probability, fails alone with a message saying why.
    """
    outcomes = []
    files = FrameFiles(blobs, max_bytes=max_scan_bytes)
    values, preprocessing = _infer(items, files, engine, pool, batcher)
    for item, value, how in zip(items, values, preprocessing):
        if isinstance(value, Future):
            try:
                value = value.result()
            except ValueError as exc:  # this scan's own error; others (a broken engine) propagate
                value = exc
        if isinstance(value, str):
            outcomes.append(
                ScanOutcome(item.scan_id, error=failure_reason(value), preprocessing=how)
            )
        elif isinstance(value, Exception):
            outcomes.append(
                ScanOutcome(
                    item.scan_id,
                    preprocessing=how,
                    error=failure_reason(f"inference failed: {value}"),
                )
            )
        elif not math.isfinite(value):
            outcomes.append(
                ScanOutcome(
                    item.scan_id,
                    preprocessing=how,
                    error="the model produced a non-finite probability",
                )
            )
        else:
            outcomes.append(
                ScanOutcome(
                    item.scan_id,
                    probability_covid=value,
                    label=engine.info.label_for(value),
                    preprocessing=how,
                )
            )
    if len(outcomes) != len(items):
        raise AssertionError(f"classify_batch made {len(outcomes)} outcomes for {len(items)} scans")
    return outcomes

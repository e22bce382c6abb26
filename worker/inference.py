"""Classify a chunk of scans: the plain function behind the Celery task."""
from __future__ import annotations

import logging
import math
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db.blobs import BlobNotFound, BlobStore
from db.scans import ModelIdentity, ScanOutcome, claim_scans, record_outcomes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanInput:
    scan_id: str
    blob_key: str


@dataclass(frozen=True)
class ChunkReport:
    claimed: int
    written: int
    succeeded: int
    failed: int


def identity_of(engine) -> ModelIdentity:
    info = engine.info
    return ModelIdentity(name=info.name, version=info.version, sha256=info.sha256,
                         trained=info.trained, engine=engine.name, precision=engine.precision,
                         preprocessing=info.preprocessing)


def _load_one(blobs: BlobStore, item: ScanInput, size: tuple[int, int]):
    from models.preprocess import ImageDecodeError, load_seed_v1

    try:
        return load_seed_v1(blobs.get(item.blob_key), size)
    except (ImageDecodeError, BlobNotFound) as exc:
        return str(exc)


def classify_batch(items: Sequence[ScanInput], blobs: BlobStore, engine,
                   pool: Optional[Executor] = None) -> list[ScanOutcome]:
    """Decode, preprocess and classify; one outcome per item, same length and order.

    A scan that cannot be read or decoded, or that gets a non-finite probability,
    fails alone with a message saying why.
    """
    size = engine.info.input_size
    if pool is not None:
        loaded = list(pool.map(lambda item: _load_one(blobs, item, size), items))
    else:
        loaded = [_load_one(blobs, item, size) for item in items]
    good = [i for i, value in enumerate(loaded) if not isinstance(value, str)]
    probabilities: dict[int, float] = {}
    if good:
        batch = np.stack([loaded[i] for i in good])
        for index, p in zip(good, engine.predict(batch)):
            probabilities[index] = float(p)
    outcomes = []
    for index, item in enumerate(items):
        if isinstance(loaded[index], str):
            outcomes.append(ScanOutcome(item.scan_id, error=loaded[index]))
            continue
        p = probabilities[index]
        if not math.isfinite(p):
            outcomes.append(ScanOutcome(item.scan_id, error="the model produced a non-finite probability"))
        else:
            outcomes.append(ScanOutcome(item.scan_id, probability_covid=p,
                                        label=engine.info.label_for(p)))
    if len(outcomes) != len(items):
        raise AssertionError(f"classify_batch made {len(outcomes)} outcomes for {len(items)} scans")
    return outcomes


def classify_chunk(session_factory: sessionmaker[Session], blobs: BlobStore, engine,
                   scan_ids: Sequence[str], pool: Optional[Executor] = None,
                   worker: Optional[str] = None) -> ChunkReport:
    """Claim the chunk's unfinished scans, classify them, write all results in one transaction.

    ``worker`` (the worker's name) is recorded with each result.
    Safe to run twice for the same ids: scans that already have a result are skipped.
    """
    with session_factory.begin() as session:
        items = [ScanInput(s.id, s.blob_key) for s in claim_scans(session, scan_ids)]
    if not items:
        log.info("chunk of %d scans: nothing left to do", len(scan_ids))
        return ChunkReport(0, 0, 0, 0)
    outcomes = classify_batch(items, blobs, engine, pool)
    with session_factory.begin() as session:
        written = record_outcomes(session, outcomes, identity_of(engine), worker)
    failed = sum(1 for o in outcomes if o.error)
    log.info("chunk of %d scans: %d succeeded, %d failed", len(items), len(items) - failed, failed)
    return ChunkReport(len(items), written, len(items) - failed, failed)

"""The models a worker keeps warm: each job's pinned model, least recently used evicted.

A job is pinned at submission to a registered model (or, when none was registered,
to the built-in untrained default, ``None`` here). The cache loads a registered model
from the model store the first time a chunk needs it, after checking the file's
SHA-256 against the registry, and keeps up to ``MAX_LOADED_MODELS`` of them warm so a
job for another model does not reload per chunk.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from sqlalchemy.orm import Session, sessionmaker

from db.blobs import BlobStore
from db.model_store import ModelStore
from db.models import Model
from db.registry import default_model, pin_jobs, scan_ids_by_pinned_model, unpinned_job_ids
from db.scans import ModelIdentity, ScanOutcome, claim_scans, record_outcomes
from worker.inference import ChunkReport, classify_chunk

if TYPE_CHECKING:
    from worker.batching import DynamicBatcher
    from worker.group_commit import GroupCommit

log = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A pinned model cannot be served (missing, tampered or unloadable file)."""

    def __init__(self, message: str, identity: ModelIdentity) -> None:
        super().__init__(message)
        self.identity = identity


def refused_identity(model: Model) -> ModelIdentity:
    """What a scan records when its pinned model could not be loaded."""
    return ModelIdentity(name=model.name, version=model.version, sha256=model.sha256,
                         trained=model.trained, engine="none", precision="none",
                         preprocessing=model.preprocessing)


class ModelCache:
    """Warm models by registered model id (None: the untrained default), LRU-bounded.

    ``build_engines`` turns a loaded model into what serves it (in the worker, its
    engines by precision); the cache keeps that per model.
    """

    def __init__(self, session_factory: sessionmaker[Session], store: ModelStore, capacity: int,
                 build_engines: Callable[[object], object]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.session_factory = session_factory
        self.store = store
        self.capacity = capacity
        self.build_engines = build_engines
        self._engines: OrderedDict[Optional[str], object] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def loaded(self) -> list[Optional[str]]:
        """Model ids held warm, least recently used first."""
        return list(self._engines)

    def warm(self) -> list[object]:
        """What ``build_engines`` made for each model held warm, least recently used first."""
        return list(self._engines.values())

    def engines_for(self, model_id: Optional[str]):
        """The warm engines of a registered model, loading (and evicting) as needed.

        Raises:
            ModelUnavailable: the model is no longer registered, or its file is missing,
                changed since registration, or cannot be loaded.
        """
        with self._lock:
            if model_id in self._engines:
                self._engines.move_to_end(model_id)
                return self._engines[model_id]
            engine = self.build_engines(self._load(model_id))
            self.loads += 1
            self._engines[model_id] = engine
            while len(self._engines) > self.capacity:
                evicted, _ = self._engines.popitem(last=False)
                log.info("evicted model %s (MAX_LOADED_MODELS=%d)", evicted, self.capacity)
            return engine

    def _load(self, model_id: Optional[str]):
        from covidscan.registration import load_registered
        from models.loader import ModelLoadError, build_untrained

        if model_id is None:
            return build_untrained()
        with self.session_factory() as session:
            model = session.get(Model, model_id)
        if model is None:
            raise ModelUnavailable(f"model {model_id} is no longer registered",
                                   ModelIdentity("unknown", "unknown", "", False, "none", "none",
                                                 "seed-v1"))
        try:
            loaded = load_registered(model, self.store)
        except ModelLoadError as exc:
            log.error("refusing model %s: %s", model.ref, exc)
            raise ModelUnavailable(f"model {model.ref} refused: {exc}",
                                   refused_identity(model)) from None
        log.info("warming model %s (sha256 %s matches its record)", model.ref, model.sha256[:12])
        return loaded

    def warm_default(self) -> None:
        """Load the registry's default (or the untrained default) before taking work."""
        with self.session_factory() as session:
            model = default_model(session)
        if model is None:
            log.warning("no model is registered (no MODEL_PATH, no `covidscan models add`): "
                        "jobs that name no model run on the untrained default, whose "
                        "probabilities mean nothing")
        else:
            log.info("jobs that name no model run on %s, the registry's default", model.ref)
        try:
            self.engines_for(model.id if model else None)
        except ModelUnavailable as exc:  # jobs pinned to it will fail with this reason
            log.error("default model not loaded: %s", exc)


def fail_chunk(session_factory: sessionmaker[Session], scan_ids: Sequence[str],
               reason: ModelUnavailable, worker: Optional[str] = None) -> ChunkReport:
    """Fail the unfinished scans among ``scan_ids`` with the reason their model was refused."""
    with session_factory.begin() as session:
        claimed = [scan.id for scan in claim_scans(session, scan_ids)]
    outcomes = [ScanOutcome(scan_id, error=str(reason)) for scan_id in claimed]
    with session_factory.begin() as session:
        written = record_outcomes(session, outcomes, reason.identity, worker)
    return ChunkReport(len(claimed), written, 0, len(claimed))


def pin_unpinned_jobs(session_factory: sessionmaker[Session], cache: ModelCache,
                      scan_ids: Sequence[str]) -> None:
    """Pin the jobs of these scans that were accepted before any model was registered.

    They get the registry's default as it is now (in a worker, after MODEL_PATH was
    registered at start-up), and the untrained default only when no model is registered
    at all; the pin is recorded on the job as if it had been made at submission.
    """
    with session_factory() as session:
        job_ids = unpinned_job_ids(session, scan_ids)
        if not job_ids:
            return
        model = default_model(session)
    untrained = None
    if model is None:
        info = cache.engines_for(None).model.info
        untrained = (info.name, info.version, info.sha256)
    with session_factory.begin() as session:
        pin_jobs(session, job_ids, model, untrained)
    if model is not None:
        log.info("pinned %d job(s) accepted before a model was registered to %s, the "
                 "registry's default", len(job_ids), model.ref)
    else:
        log.warning("pinned %d job(s) to the untrained default %s: no model is registered, "
                    "so its probabilities mean nothing", len(job_ids), untrained[0])


def classify_pinned(session_factory: sessionmaker[Session], blobs: BlobStore, cache: ModelCache,
                    scan_ids: Sequence[str], precision: Optional[str] = None,
                    pool: Optional[Executor] = None, batcher: Optional["DynamicBatcher"] = None,
                    group: Optional["GroupCommit"] = None,
                    worker: Optional[str] = None) -> ChunkReport:
    """Classify each scan with its job's pinned model; scans of a refused model fail alone.

    ``precision`` picks the engine (None: INFERENCE_PRECISION); ``pool``, ``batcher`` and
    ``group`` are passed to :func:`worker.inference.classify_chunk`; ``worker`` (the
    worker's name) is recorded with each result.
    """
    pin_unpinned_jobs(session_factory, cache, scan_ids)
    with session_factory() as session:
        groups = scan_ids_by_pinned_model(session, scan_ids)
    reports = []
    for model_id, ids in groups.items():
        try:
            engine = cache.engines_for(model_id).get(precision)
        except ModelUnavailable as exc:
            reports.append(fail_chunk(session_factory, ids, exc, worker))
            continue
        reports.append(classify_chunk(session_factory, blobs, engine, ids, pool, batcher, group,
                                      worker))
    return ChunkReport(*(sum(getattr(r, f) for r in reports)
                         for f in ("claimed", "written", "succeeded", "failed")))

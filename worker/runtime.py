"""What a worker process loads once: settings, database, blob store, warm engines, the batcher.

Engines are obtained through :func:`engine_for` only, keyed by model and precision, so
a worker can keep several warm and the batcher never mixes them in one batch.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from covidscan.settings import Settings, load_settings
from db.blobs import BlobStore
from db.session import make_engine, make_session_factory
from worker.batching import DynamicBatcher
from worker.group_commit import GroupCommit
from worker.inference import predict_items

log = logging.getLogger(__name__)


def load_model(settings: Settings):
    """Load MODEL_PATH, or build the labelled untrained default when none is set."""
    from models.loader import build_untrained, load_model_file

    if settings.model_path is not None:
        return load_model_file(settings.model_path)
    return build_untrained()


class EngineCache:
    """Warm engines by (model, precision); each is built once, under a lock, on first use.

    The TensorFlow fp32 engine of a model is the reference other engines are checked
    against, and what serves when they fail the check.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._models: dict[Optional[str], object] = {}
        self._references: dict[Optional[str], object] = {}
        self._engines: dict[tuple[Optional[str], str], object] = {}

    def _model(self, model_ref: Optional[str]):
        if model_ref is not None:
            raise LookupError(f"this worker serves only its configured model, not {model_ref!r}")
        if model_ref not in self._models:
            self._models[model_ref] = load_model(self.settings)
        return self._models[model_ref]

    def get(self, model_ref: Optional[str] = None, precision: Optional[str] = None):
        """The warm engine for ``model_ref`` (None: MODEL_PATH or the default) at ``precision``."""
        from models.selection import build_engine, reference_engine

        settings = self.settings
        key = (model_ref, precision or settings.inference_precision)
        engine = self._engines.get(key)
        if engine is not None:  # the common case: no lock, so a slow build blocks no one else
            return engine
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                return engine
            model = self._model(model_ref)
            if model_ref not in self._references:
                self._references[model_ref] = reference_engine(model, settings.max_batch_size)
            engine = build_engine(model, settings.inference_engine, key[1], settings.max_batch_size,
                                  settings.engine_cache_dir, self._references[model_ref])
            self._engines[key] = engine
            log.info("model %s:%s, %s requested: serving on %s/%s", model.info.name,
                     model.info.version, key[1], engine.name, engine.precision)
            return engine


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    engines: EngineCache
    decode_pool: ThreadPoolExecutor
    batcher: DynamicBatcher
    group: GroupCommit

    def close(self) -> None:
        self.batcher.stop(timeout=60)
        self.group.stop(timeout=60)
        self.decode_pool.shutdown(wait=False)
        self.session_factory.kw["bind"].dispose()


_runtime: Optional[WorkerRuntime] = None
_runtime_lock = threading.Lock()


def initialise(settings: Optional[Settings] = None) -> WorkerRuntime:
    """Load and warm the default engine once for this process and start the batcher. Idempotent."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        from models.engine import configure_tensorflow_devices

        settings = settings or load_settings()
        gpus = configure_tensorflow_devices()
        log.info("worker pid %s: GPUs %s", os.getpid(), gpus or "none, running on the CPU")
        engines = EngineCache(settings)
        engines.get()
        batcher = DynamicBatcher(predict_items, settings.max_batch_size,
                                 settings.max_queue_delay_ms / 1000, name="inference")
        session_factory = make_session_factory(make_engine(settings.database_url))
        _runtime = WorkerRuntime(
            settings=settings,
            session_factory=session_factory,
            blobs=BlobStore(settings.blob_dir),
            engines=engines,
            decode_pool=ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                           thread_name_prefix="decode"),
            batcher=batcher.start(),
            group=GroupCommit(session_factory).start(),
        )
        return _runtime


def current_runtime() -> Optional[WorkerRuntime]:
    """The process's runtime if it has been initialised, without loading anything."""
    return _runtime


def get_runtime() -> WorkerRuntime:
    """The process's runtime; loads it on first use when no start-up hook did."""
    if _runtime is None:
        log.warning("model was not loaded at start-up; loading it now")
        return initialise()
    return _runtime


def engine_for(model_ref: Optional[str] = None, precision: Optional[str] = None):
    """The warm engine that serves ``model_ref`` at ``precision`` in this process.

    Args:
        model_ref: None for the worker's configured model.
        precision: ``fp32``, ``bf16`` or ``fp16``; None for INFERENCE_PRECISION. The engine
            may compute in fp32 instead (no hardware support, failed parity); its
            ``precision`` says what it computes in.
    """
    return get_runtime().engines.get(model_ref, precision)

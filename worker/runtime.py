"""What a worker process loads once: settings, database, blob store, warm models, the batcher.

At start-up ``MODEL_PATH``, when set, is registered (or found by SHA-256; ``covidscan migrate``
and ``make run`` have usually done it already) and becomes the default if none exists; then
the default model is loaded and warmed. Other models load
on first use through :class:`worker.model_cache.ModelCache` (least recently used evicted).
Engines are obtained through :func:`engine_for` only, keyed by model and precision, so the
batcher never mixes models or precisions in one batch.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from covidscan.registration import register_configured_model
from covidscan.settings import Settings, load_settings
from db.blobs import BlobStore
from db.model_store import ModelStore
from db.session import make_engine, make_session_factory
from worker.batching import DynamicBatcher
from worker.group_commit import GroupCommit
from worker.inference import predict_items
from worker.model_cache import ModelCache

log = logging.getLogger(__name__)


class ModelEngines:
    """One loaded model's warm engines by precision; each is built once, on first use.

    The TensorFlow fp32 engine of the model is the reference other engines are checked
    against, and what serves when they fail the check.
    """

    def __init__(self, model, settings: Settings) -> None:
        from models.selection import reference_engine

        self.model = model
        self.settings = settings
        self._lock = threading.Lock()
        self._engines: dict[str, object] = {}
        self.reference = reference_engine(model, settings.max_batch_size)
        self.get()  # warm the default precision before any work arrives

    def get(self, precision: Optional[str] = None):
        """The warm engine at ``precision`` (None: INFERENCE_PRECISION)."""
        from models.selection import build_engine

        settings = self.settings
        wanted = precision or settings.inference_precision
        engine = self._engines.get(wanted)
        if engine is not None:  # the common case: no lock, so a slow build blocks no one else
            return engine
        with self._lock:
            engine = self._engines.get(wanted)
            if engine is None:
                engine = build_engine(self.model, settings.inference_engine, wanted,
                                      settings.max_batch_size, settings.engine_cache_dir,
                                      self.reference)
                self._engines[wanted] = engine
                log.info("model %s:%s, %s requested: serving on %s/%s", self.model.info.name,
                         self.model.info.version, wanted, engine.name, engine.precision)
            return engine


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    models: ModelCache
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
    """Warm the default model once for this process and start the batcher. Idempotent."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        from models.engine import configure_tensorflow_devices

        settings = settings or load_settings()
        gpus = configure_tensorflow_devices()
        log.info("worker pid %s: GPUs %s", os.getpid(), gpus or "none, running on the CPU")
        session_factory = make_session_factory(make_engine(settings.database_url))
        register_configured_model(settings, session_factory)
        models = ModelCache(session_factory, ModelStore(settings.model_store_dir),
                            settings.max_loaded_models,
                            lambda model: ModelEngines(model, settings))
        models.warm_default()
        batcher = DynamicBatcher(predict_items, settings.max_batch_size,
                                 settings.max_queue_delay_ms / 1000, name="inference")
        _runtime = WorkerRuntime(
            settings=settings,
            session_factory=session_factory,
            blobs=BlobStore(settings.blob_dir),
            models=models,
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


def engine_for(model_id: Optional[str] = None, precision: Optional[str] = None):
    """The warm engine that serves a registered model at ``precision`` in this process.

    Args:
        model_id: the registered model's id; None for the built-in untrained default.
        precision: ``fp32``, ``bf16`` or ``fp16``; None for INFERENCE_PRECISION. The engine
            may compute in fp32 instead (no hardware support, failed parity); its
            ``precision`` says what it computes in.

    Raises:
        worker.model_cache.ModelUnavailable: the model is gone, tampered or unloadable.
    """
    return get_runtime().models.engines_for(model_id).get(precision)

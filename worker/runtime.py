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
from typing import Callable, Optional

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
from worker.presence import Presence

log = logging.getLogger(__name__)


class ModelEngines:
    """One loaded model's warm engines by requested precision; each is built once, on first use.

    The TensorFlow fp32 engine of the model is the reference other engines are gated
    against, and what serves when they fail. ``auto`` is the fastest engine that passed.
    """

    def __init__(self, model, settings: Settings,
                 on_change: Optional[Callable[[], None]] = None) -> None:
        """``on_change`` is called after each new engine is built (the worker's status row)."""
        from models.calibration import default_calibration, for_model
        from models.selection import EngineBuilder, reference_engine

        self.model = model
        self.settings = settings
        self.on_change = on_change
        self._lock = threading.RLock()
        self._choices: dict[str, object] = {}
        size = model.info.input_size
        calibration = (for_model(model.path, size) if model.path is not None
                       else default_calibration(size))
        self.builder = EngineBuilder(model, settings.inference_engine, settings.max_batch_size,
                                     settings.engine_cache_dir,
                                     reference_engine(model, settings.max_batch_size),
                                     calibration, calibration.auc)
        self.get()  # warm the default precision before any work arrives

    @property
    def reference(self):
        return self.builder.reference

    def get(self, precision: Optional[str] = None):
        """The warm engine for ``precision`` (None: INFERENCE_PRECISION)."""
        return self.choice(precision).engine

    def choice(self, precision: Optional[str] = None):
        """The :class:`models.selection.Choice` serving ``precision``, built on first use."""
        from models.selection import CONCRETE_PRECISIONS

        wanted = precision or self.settings.inference_precision
        found = self._choices.get(wanted)
        if found is not None:  # the common case: no lock, so a slow build blocks no one else
            return found
        with self._lock:
            found = self._choices.get(wanted)
            if found is None:
                if wanted == "auto":
                    found = self.builder.fastest([self.choice(p) for p in CONCRETE_PRECISIONS])
                else:
                    found = self.builder.build(wanted)
                self._choices[wanted] = found
                log.info("model %s:%s, %s requested: serving on %s/%s (%s)",
                         self.model.info.name, self.model.info.version, wanted,
                         found.engine.name, found.engine.precision, found.note)
                if self.on_change is not None:
                    self.on_change()
            return found

    def describe(self) -> dict:
        """The choices made so far, as plain values (what ``GET /v1/workers`` shows)."""
        info = self.model.info
        return {"model": {"name": info.name, "version": info.version, "sha256": info.sha256},
                "calibration": self.builder.calibration.describe(),
                "engines": {requested: choice.as_dict()
                            for requested, choice in list(self._choices.items())}}


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    models: ModelCache
    decode_pool: ThreadPoolExecutor
    batcher: DynamicBatcher
    group: GroupCommit
    presence: Optional[Presence] = None

    def engines(self) -> list[dict]:
        """Per warm model, what serves each requested precision (see ModelEngines.describe)."""
        return [engines.describe() for engines in self.models.warm()]

    def announce(self, name: str) -> None:
        """Tell the API this worker is ready (its default model is warm) and keep telling it."""
        if self.presence is None:
            self.presence = Presence(self.session_factory, name, self.engines).start()

    def close(self) -> None:
        if self.presence is not None:
            self.presence.stop()
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
                            lambda model: ModelEngines(model, settings, _engines_changed))
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


def _engines_changed() -> None:
    if _runtime is not None and _runtime.presence is not None:
        _runtime.presence.refresh()


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

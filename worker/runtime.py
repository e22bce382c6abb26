"""What a worker process loads once: settings, database, blob store and its warm models.

At start-up ``MODEL_PATH``, when set, is registered (or found by SHA-256) and becomes the
default if none exists; then the default model is loaded and warmed. Other models load
on first use through :class:`worker.model_cache.ModelCache`.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from covidscan.settings import Settings, load_settings
from db.blobs import BlobStore
from db.model_store import ModelStore
from db.session import make_engine, make_session_factory
from worker.model_cache import ModelCache

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    models: ModelCache
    decode_pool: ThreadPoolExecutor

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False)
        self.session_factory.kw["bind"].dispose()


_runtime: Optional[WorkerRuntime] = None


def register_model_path(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    """Register MODEL_PATH (or find it by SHA-256); it becomes the default only if none exists."""
    from covidscan.registration import register_or_select

    if settings.model_path is not None:
        model = register_or_select(session_factory, ModelStore(settings.model_store_dir),
                                   settings.model_path)
        log.info("MODEL_PATH is %s%s", model.ref, " (the default)" if model.is_default else "")


def initialise(settings: Optional[Settings] = None) -> WorkerRuntime:
    """Load and warm the model once for this process. Idempotent."""
    global _runtime
    if _runtime is not None:
        return _runtime
    from models.engine import configure_tensorflow_devices, create_engine

    settings = settings or load_settings()
    gpus = configure_tensorflow_devices()
    log.info("worker pid %s: GPUs %s", os.getpid(), gpus or "none, running on the CPU")
    session_factory = make_session_factory(make_engine(settings.database_url))
    register_model_path(settings, session_factory)
    models = ModelCache(session_factory, ModelStore(settings.model_store_dir),
                        settings.max_loaded_models,
                        lambda model: create_engine(model, batch_size=settings.batch_size))
    models.warm_default()
    _runtime = WorkerRuntime(
        settings=settings,
        session_factory=session_factory,
        blobs=BlobStore(settings.blob_dir),
        models=models,
        decode_pool=ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                       thread_name_prefix="decode"),
    )
    return _runtime


def get_runtime() -> WorkerRuntime:
    """The process's runtime; loads it on first use when no start-up hook did."""
    if _runtime is None:
        log.warning("model was not loaded at start-up; loading it now")
        return initialise()
    return _runtime

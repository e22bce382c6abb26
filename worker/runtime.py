"""What a worker process loads once: settings, database, blob store and the warm model."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from covidscan.settings import Settings, load_settings
from db.blobs import BlobStore
from db.session import make_engine, make_session_factory

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    engine: "object"  # models.engine.Engine; typed loosely to keep TensorFlow out of imports
    decode_pool: ThreadPoolExecutor

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False)
        self.session_factory.kw["bind"].dispose()


_runtime: Optional[WorkerRuntime] = None


def load_model(settings: Settings):
    """Load MODEL_PATH, or build the labelled untrained default when none is set."""
    from models.loader import build_untrained, load_model_file

    if settings.model_path is not None:
        return load_model_file(settings.model_path)
    return build_untrained()


def initialise(settings: Optional[Settings] = None) -> WorkerRuntime:
    """Load and warm the model once for this process. Idempotent."""
    global _runtime
    if _runtime is not None:
        return _runtime
    from models.engine import configure_tensorflow_devices, create_engine

    settings = settings or load_settings()
    gpus = configure_tensorflow_devices()
    log.info("worker pid %s: GPUs %s", os.getpid(), gpus or "none, running on the CPU")
    model = load_model(settings)
    engine = create_engine(model, batch_size=settings.batch_size)
    log.info("model %s:%s warm on %s/%s", model.info.name, model.info.version,
             engine.name, engine.precision)
    _runtime = WorkerRuntime(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings.database_url)),
        blobs=BlobStore(settings.blob_dir),
        engine=engine,
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

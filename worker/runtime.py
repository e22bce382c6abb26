"""What a worker process loads once, passed to the task body as one object.

At start-up ``MODEL_PATH``, when set, is registered (or found by SHA-256; ``covidscan migrate``
and ``make run`` have usually done it already) and becomes the default if none exists; then
the default model is loaded and warmed. Other models load
on first use through :class:`worker.model_cache.ModelCache` (least recently used evicted).
Engines are keyed by model and precision, so the batcher never mixes them in one batch.
Beside the task threads run the heartbeat (renews this process's leases) and the sweep
(:mod:`core.sweep`: expired leases, the outbox, retention).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from sqlalchemy.orm import Session, sessionmaker

from core.sweep import SweepLoop, sweep_once
from core.wakeups import WakeupSender
from covidscan.settings import Settings, load_settings
from db.blobs import BlobStore, open_blob_store
from db.explanations import release_explanation_leases, renew_explanation_leases
from db.model_store import open_model_store
from db.outbox import add_wakeups, relay
from db.scans import release_leases, renew_leases
from db.session import make_engine, make_session_factory
from worker import metrics
from worker.batching import DynamicBatcher
from worker.inference import predict_items
from worker.model_cache import ModelCache
from worker.presence import Presence
from worker.registration import register_configured_model

if TYPE_CHECKING:
    from models.gradcam import GradCam
    from models.loader import LoadedModel
    from models.selection import Choice

log = logging.getLogger(__name__)


class ModelEngines:
    """One loaded model's warm engines by requested precision; each is built once, on first use.

    The TensorFlow fp32 engine of the model is the reference other engines are gated
    against, and what serves when they fail. ``auto`` is the fastest engine that passed.
    """

    def __init__(
        self, model: LoadedModel, settings: Settings, on_change: Optional[Callable[[], None]] = None
    ) -> None:
        """``on_change`` is called after each new engine is built (the worker's status row)."""
        from models.calibration import default_calibration, for_model
        from models.selection import EngineBuilder, reference_engine

        self.model = model
        self.settings = settings
        self.on_change = on_change
        self._lock = threading.RLock()
        self._choices: dict[str, Choice] = {}
        self._explainer: Optional[GradCam] = None
        size = model.info.input_size
        calibration = (
            for_model(model.path, size) if model.path is not None else default_calibration(size)
        )
        self.builder = EngineBuilder(
            model,
            settings.inference_engine,
            settings.max_batch_size,
            settings.engine_cache_dir,
            reference_engine(model, settings.max_batch_size),
            calibration,
            calibration.auc,
        )
        self.get()  # warm the default precision before any work arrives

    @property
    def reference(self):
        return self.builder.reference

    def get(self, precision: Optional[str] = None):
        """The warm engine for ``precision`` (None: INFERENCE_PRECISION)."""
        return self.choice(precision).engine

    def choice(self, precision: Optional[str] = None) -> Choice:
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
                    info = self.model.info
                    with metrics.timed(metrics.ENGINE_BUILD, info.name, info.version, wanted):
                        found = self.builder.build(wanted)
                self._choices[wanted] = found
                log.info(
                    "model %s:%s, %s requested: serving on %s/%s (%s)",
                    self.model.info.name,
                    self.model.info.version,
                    wanted,
                    found.engine.name,
                    found.engine.precision,
                    found.note,
                )
                if self.on_change is not None:
                    self.on_change()
            return found

    def explainer(self) -> GradCam:
        """The model's Grad-CAM (:class:`models.gradcam.GradCam`), built and warmed on first use.

        Only workers that explain something pay for it: jobs without explanations never
        build one.
        """
        if self._explainer is None:
            from models.gradcam import GradCam

            with self._lock:
                if self._explainer is None:
                    explainer = GradCam(
                        self.model, min(self.settings.batch_size, self.settings.max_batch_size)
                    )
                    explainer.warm_up()
                    log.info(
                        "model %s:%s: Grad-CAM on layer %s (%s score)",
                        self.model.info.name,
                        self.model.info.version,
                        explainer.layer,
                        explainer.score,
                    )
                    self._explainer = explainer
        return self._explainer

    def describe(self) -> dict:
        """The choices made so far, as plain values (what ``GET /v1/workers`` shows)."""
        info = self.model.info
        return {
            "model": {"name": info.name, "version": info.version, "sha256": info.sha256},
            "calibration": self.builder.calibration.describe(),
            "engines": {
                requested: choice.as_dict() for requested, choice in list(self._choices.items())
            },
        }


@dataclass
class WorkerRuntime:
    """Everything the task body needs: sessions, stores, models, the batcher, the leases.

    ``owner`` names this process in every lease it takes (unique per start, so a restarted
    worker never mistakes its predecessor's leases for its own).
    """

    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    models: ModelCache[ModelEngines]
    decode_pool: ThreadPoolExecutor
    batcher: DynamicBatcher
    owner: str
    claim_slots: threading.BoundedSemaphore
    send_wakeups: WakeupSender
    stopping: threading.Event = field(default_factory=threading.Event)
    loops: list[SweepLoop] = field(default_factory=list)
    _active: int = 0
    _active_lock: threading.Lock = field(default_factory=threading.Lock)
    presence: Optional[Presence] = None

    def engines(self) -> list[dict]:
        """Per warm model, what serves each requested precision (see ModelEngines.describe)."""
        return [engines.describe() for engines in self.models.warm()]

    def announce(self, name: str) -> None:
        """Tell the API this worker is ready (its default model is warm) and keep telling it."""
        if self.presence is None:
            self.presence = Presence(self.session_factory, name, self.engines).start()

    @contextmanager
    def draining(self) -> Iterator[None]:
        """Counts the drains running, so the sweep knows whether this worker is idle."""
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1

    @property
    def idle(self) -> bool:
        return self._active == 0 and not self.stopping.is_set()

    def heartbeat(self) -> int:
        """Renew every lease this process holds (scans and explanations)."""
        with self.session_factory.begin() as session:
            seconds = self.settings.lease_seconds
            held = renew_leases(session, self.owner, seconds) + renew_explanation_leases(
                session, self.owner, seconds
            )
        metrics.LEASES_HELD.set(held)
        return held

    def sweep(self):
        return sweep_once(
            self.session_factory,
            self.blobs,
            self.send_wakeups,
            self.settings,
            idle=self.idle,
            clean_up=False,
            send_deliveries=self.send_wakeups.deliver,
        )

    def start_loops(self) -> WorkerRuntime:
        settings = self.settings
        self.loops = [
            SweepLoop(
                self.heartbeat, max(1.0, settings.lease_seconds / 3), name="heartbeat"
            ).start(),
            SweepLoop(self.sweep, settings.sweep_interval, name="sweep").start(),
        ]
        return self

    def stop_taking_work(self) -> None:
        """SIGTERM: drains finish the batch in hand and claim no more."""
        self.stopping.set()

    def release(self) -> int:
        """Give back every lease this process still holds, so other workers take them now."""
        with self.session_factory.begin() as session:
            released = release_leases(session, self.owner)
            explanations = release_explanation_leases(session, self.owner)
        if released or explanations:
            log.info(
                "released %d leased scans and %d explanations back to the queue",
                released,
                explanations,
            )
            released += explanations
        return released

    def close(self) -> None:
        if self.presence is not None:
            self.presence.stop()
        self.stop_taking_work()
        self.batcher.stop(timeout=60)
        for loop in self.loops:
            loop.stop()
        try:
            if self.release():
                with self.session_factory.begin() as session:  # wake whoever takes them
                    add_wakeups(session, 1, "worker stopped")
                relay(self.session_factory, self.send_wakeups)
        finally:
            self.decode_pool.shutdown(wait=False)
            self.send_wakeups.close()
            self.session_factory.kw["bind"].dispose()


_runtime: Optional[WorkerRuntime] = None
_runtime_lock = threading.Lock()


def lease_owner(node: Optional[str] = None) -> str:
    """This process's lease owner id: its node name, pid and a random part."""
    return f"{node or 'worker'}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def initialise(settings: Optional[Settings] = None, node: Optional[str] = None) -> WorkerRuntime:
    """Warm the default model once for this process, start the batcher and the loops.

    Idempotent.
    """
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
        store = open_model_store(settings.model_store_dir, settings.blob_store)
        models = ModelCache(
            session_factory,
            store,
            settings.max_loaded_models,
            lambda model: ModelEngines(model, settings, _engines_changed),
        )
        models.warm_default()
        batcher = DynamicBatcher(
            predict_items,
            settings.max_batch_size,
            settings.max_queue_delay_ms / 1000,
            name="inference",
            on_batch=metrics.BatchObserver(settings.max_batch_size),
            concurrency=2,
        )
        # One claim being inferred while the next decodes: enough to keep the model busy.
        slots = max(2, 2 * settings.max_batch_size // settings.batch_size)
        blobs = open_blob_store(settings.blob_dir, settings.blob_store)
        # A decode thread waits on the network for each object: more of them keep batches
        # full while a read is in flight.
        decoders = (os.cpu_count() or 2) * blobs.fetch_concurrency
        _runtime = WorkerRuntime(
            settings=settings,
            session_factory=session_factory,
            blobs=blobs,
            models=models,
            decode_pool=ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="decode"),
            batcher=batcher.start(),
            owner=lease_owner(node),
            claim_slots=threading.BoundedSemaphore(slots),
            send_wakeups=WakeupSender(settings.redis_url),
        ).start_loops()
        log.info(
            "leases as %s: %d s, renewed every %.0f s; sweep every %d s",
            _runtime.owner,
            settings.lease_seconds,
            max(1.0, settings.lease_seconds / 3),
            settings.sweep_interval,
        )
        freeze_long_lived_objects()
        return _runtime


def freeze_long_lived_objects() -> int:
    """Leave what start-up made (TensorFlow, OpenVINO, the warm model) out of every later
    garbage collection; returns how many objects that is.

    A full collection walks every tracked object with the GIL held: with these libraries
    loaded that stalled the batcher and the decode threads for about 0.2 s, twice in a
    512-slice job. Garbage already made is collected first, so nothing unreachable is kept.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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

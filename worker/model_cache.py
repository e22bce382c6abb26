"""The models a worker keeps warm: each job's pinned model, least recently used evicted.

A job is pinned at submission to a registered model (or, when none was registered,
to the built-in untrained default, ``None`` here). The cache loads a registered model
from the model store the first time a batch needs it, after checking the file's
SHA-256 against the registry, and keeps up to ``MAX_LOADED_MODELS`` of them warm so a
job for another model does not reload per batch. A load does not hold the cache's lock:
scans of a warm model go on while another model loads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Generic, Optional, Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from db.identity import ModelIdentity
from db.model_store import ModelStore
from db.models import Model
from db.registry import default_model, pin_jobs, unpinned_job_ids
from worker.metrics import model_loaded

if TYPE_CHECKING:
    from models.loader import LoadedModel

log = logging.getLogger(__name__)


class ServesModel(Protocol):
    """What a cache entry is built into: it keeps the loaded model it serves."""

    @property
    def model(self) -> LoadedModel: ...


EnginesT = TypeVar("EnginesT", bound=ServesModel)


class ModelUnavailable(RuntimeError):
    """A pinned model cannot be served (missing, tampered or unloadable file)."""

    def __init__(self, message: str, identity: ModelIdentity) -> None:
        super().__init__(message)
        self.identity = identity


class ModelCache(Generic[EnginesT]):
    """Warm models by registered model id (None: the untrained default), LRU-bounded.

    ``build_engines`` turns a loaded model into what serves it (in the worker, its
    engines by precision); the cache keeps that per model.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        store: ModelStore,
        capacity: int,
        build_engines: Callable[[LoadedModel], EnginesT],
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.session_factory = session_factory
        self.store = store
        self.capacity = capacity
        self.build_engines = build_engines
        self._engines: OrderedDict[Optional[str], EnginesT] = OrderedDict()
        self._loading: dict[Optional[str], Future[EnginesT]] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def loaded(self) -> list[Optional[str]]:
        """Model ids held warm, least recently used first."""
        with self._lock:
            return list(self._engines)

    def warm(self) -> list[EnginesT]:
        """What ``build_engines`` made for each model held warm, least recently used first."""
        return list(self._engines.values())

    def engines_for(self, model_id: Optional[str]) -> EnginesT:
        """The warm engines of a registered model, loading (and evicting) as needed.

        Concurrent callers for one model share a single load; callers for warm models
        are not held up by it.

        Raises:
            ModelUnavailable: the model is no longer registered, or its file is missing,
                changed since registration, or cannot be loaded.
        """
        with self._lock:
            if model_id in self._engines:
                self._engines.move_to_end(model_id)
                return self._engines[model_id]
            waiting = self._loading.get(model_id)
            if waiting is None:  # this caller loads it; later ones wait for its result
                pending: Future[EnginesT] = Future()
                self._loading[model_id] = pending
        if waiting is not None:
            return waiting.result()
        try:
            started = time.perf_counter()
            model = self._load(model_id)
            model_loaded(model, time.perf_counter() - started)
            engines = self.build_engines(model)
        except BaseException as exc:
            with self._lock:
                del self._loading[model_id]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[model_id]
            self.loads += 1
            self._engines[model_id] = engines
            while len(self._engines) > self.capacity:
                evicted, _ = self._engines.popitem(last=False)
                log.info("evicted model %s (MAX_LOADED_MODELS=%d)", evicted, self.capacity)
        pending.set_result(engines)
        return engines

    def _load(self, model_id: Optional[str]) -> LoadedModel:
        from models.loader import ModelLoadError, build_untrained
        from worker.registration import load_registered

        if model_id is None:
            return build_untrained()
        with self.session_factory() as session:
            model = session.get(Model, model_id)
        if model is None:
            raise ModelUnavailable(
                f"model {model_id} is no longer registered", ModelIdentity.unknown()
            )
        try:
            loaded = load_registered(model, self.store)
        except ModelLoadError as exc:
            log.error("refusing model %s: %s", model.ref, exc)
            raise ModelUnavailable(
                f"model {model.ref} refused: {exc}", ModelIdentity.of_registered(model)
            ) from None
        log.info("warming model %s (sha256 %s matches its record)", model.ref, model.sha256[:12])
        return loaded

    def warm_default(self) -> None:
        """Load the registry's default (or the untrained default) before taking work."""
        with self.session_factory() as session:
            model = default_model(session)
        if model is None:
            log.warning(
                "no model is registered (no MODEL_PATH, no `covidscan models add`): "
                "jobs that name no model run on the untrained default, whose "
                "probabilities mean nothing"
            )
        else:
            log.info("jobs that name no model run on %s, the registry's default", model.ref)
        try:
            self.engines_for(model.id if model else None)
        except ModelUnavailable as exc:  # jobs pinned to it will fail with this reason
            log.error("default model not loaded: %s", exc)


def pin_unpinned_jobs(
    session_factory: sessionmaker[Session], cache: ModelCache, scan_ids: Sequence[str]
) -> None:
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
    if model is not None:
        identity = ModelIdentity.of_registered(model)
    else:
        identity = ModelIdentity.of_untrained(cache.engines_for(None).model.info)
    with session_factory.begin() as session:
        pin_jobs(session, job_ids, model.id if model else None, identity)
    if model is not None:
        log.info(
            "pinned %d job(s) accepted before a model was registered to %s, the registry's default",
            len(job_ids),
            model.ref,
        )
    else:
        log.warning(
            "pinned %d job(s) to the untrained default %s: no model is registered, "
            "so its probabilities mean nothing",
            len(job_ids),
            identity.name,
        )

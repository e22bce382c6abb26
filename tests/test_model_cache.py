"""The worker's model cache (LRU) and MODEL_PATH's registration semantics."""

import pytest

from db.model_store import ModelStore
from db.registry import get_model, list_models, set_default
from db.session import make_engine, make_session_factory
from tests.test_registry_db import a_model
from worker.model_cache import ModelCache, ModelUnavailable
from worker.registration import register_or_select

pytestmark = pytest.mark.database


@pytest.fixture
def session_factory(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def registered(session_factory, *versions):
    from db.registry import add_model

    with session_factory.begin() as session:
        return [add_model(session, a_model(version=v, sha=v * 64)).id for v in versions]


def test_least_recently_used_models_are_evicted_beyond_the_cap(
    session_factory, tmp_path, monkeypatch
):
    loads = []

    def fake_load(model, store):  # unit test of the cache's bookkeeping, not of loading
        loads.append(model.version)
        return model.version

    monkeypatch.setattr("worker.registration.load_registered", fake_load)
    a, b, c = registered(session_factory, "a", "b", "c")
    cache = ModelCache(session_factory, ModelStore(tmp_path), 2, lambda loaded: f"engine-{loaded}")
    assert [cache.engines_for(i) for i in (a, b, a, a, b)] == [
        "engine-a",
        "engine-b",
        "engine-a",
        "engine-a",
        "engine-b",
    ]
    assert loads == ["a", "b"]
    cache.engines_for(c)  # evicts a, the least recently used
    assert cache.loaded() == [b, c]
    cache.engines_for(a)
    assert loads == ["a", "b", "c", "a"] and cache.loaded() == [c, a]
    with pytest.raises(ModelUnavailable, match="no longer registered"):
        cache.engines_for("0" * 32)
    with pytest.raises(ValueError, match="capacity"):
        ModelCache(session_factory, ModelStore(tmp_path), 0, str)


def test_model_path_registers_once_and_never_replaces_a_chosen_default(
    session_factory, tmp_path, tiny_model_path
):
    store = ModelStore(tmp_path / "store")
    first = register_or_select(session_factory, store, tiny_model_path)
    assert (first.name, first.is_default, first.source) == (
        "tiny_ct",
        True,
        f"MODEL_PATH {tiny_model_path}",
    )
    again = register_or_select(session_factory, store, tiny_model_path)
    assert again.id == first.id
    registered(session_factory, "z")
    with session_factory.begin() as session:
        set_default(session, get_model(session, "m:z"))
    third = register_or_select(session_factory, store, tiny_model_path)
    assert third.id == first.id and not third.is_default
    with session_factory() as session:
        assert [m.ref for m in list_models(session) if m.is_default] == ["m:z"]
        assert len(list_models(session)) == 2


def test_an_identical_copy_already_in_the_store_is_reused(
    session_factory, tmp_path, tiny_model_path
):
    """Two workers registering one MODEL_PATH at once: the second finds the first's copy."""
    from models.loader import file_sha256

    store = ModelStore(tmp_path / "store")
    version = file_sha256(tiny_model_path)[:12]
    stored = store.put(tiny_model_path, "tiny_ct", version)
    model = register_or_select(session_factory, store, tiny_model_path)
    assert model.stored_path == stored and store.path(stored).exists()
    with pytest.raises(FileExistsError):
        store.put(tiny_model_path, "tiny_ct", version)


def unpinned_job(session_factory, model=None) -> tuple[str, list[str]]:
    """A job as the API writes it: pinned to ``model``, or unpinned when none is registered."""
    from db.jobs import JobOptions, NewScan, create_job
    from db.models import new_id

    job_id = new_id()
    with session_factory.begin() as session:
        job = create_job(
            session,
            [NewScan(f"s{i}.png", f"{job_id}/{i}", 1) for i in range(3)],
            job_id,
            JobOptions(model=model),
        )
        session.flush()
        return job_id, [scan.id for scan in job.scans]


def job_pin(session_factory, job_id):
    from db.models import Job

    with session_factory() as session:
        job = session.get(Job, job_id)
        return job.model_id, job.model_name, job.model_sha256, job.model_trained


class _Untrained:
    """Stands in for the untrained default's warm engines; records that it was asked for."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.model = SimpleNamespace(
            info=SimpleNamespace(name="resnet50-untrained", version="seed-1234", sha256="u" * 64)
        )


def test_a_job_accepted_before_registration_is_pinned_to_the_default_when_it_runs(
    session_factory, tmp_path
):
    from worker.model_cache import pin_unpinned_jobs

    built = []
    cache = ModelCache(
        session_factory,
        ModelStore(tmp_path),
        2,
        lambda loaded: built.append(loaded) or _Untrained(),
    )
    early_id, early_scans = unpinned_job(session_factory)
    assert job_pin(session_factory, early_id) == (None, None, None, None)
    (model_id,) = registered(session_factory, "a")  # MODEL_PATH, registered by the worker
    with session_factory.begin() as session:
        set_default(session, get_model(session, "m:a"))
    with session_factory() as session:
        pinned_id, pinned_scans = unpinned_job(session_factory, get_model(session, "m:a"))
    pin_unpinned_jobs(session_factory, cache, early_scans + pinned_scans)
    assert job_pin(session_factory, early_id) == (model_id, "m", "a" * 64, True)
    assert job_pin(session_factory, pinned_id) == (model_id, "m", "a" * 64, True)
    assert built == []  # the untrained default was never loaded


def test_with_no_model_registered_at_all_the_job_is_pinned_to_the_untrained_default(
    session_factory, tmp_path, monkeypatch
):
    from worker.model_cache import pin_unpinned_jobs

    monkeypatch.setattr("models.loader.build_untrained", lambda: "untrained")
    cache = ModelCache(session_factory, ModelStore(tmp_path), 2, lambda loaded: _Untrained())
    job_id, scans = unpinned_job(session_factory)
    pin_unpinned_jobs(session_factory, cache, scans)
    assert job_pin(session_factory, job_id) == (None, "resnet50-untrained", "u" * 64, False)
    # A model registered later does not move a job already pinned (it may have results).
    registered(session_factory, "b")
    pin_unpinned_jobs(session_factory, cache, scans)
    assert job_pin(session_factory, job_id)[1] == "resnet50-untrained"


def test_a_model_that_loads_does_not_hold_up_a_warm_one(session_factory, tmp_path, monkeypatch):
    import threading
    import time

    slow_started, release = threading.Event(), threading.Event()

    def load(model, store):
        if model.version == "s":
            slow_started.set()
            release.wait(10)
        return model.version

    monkeypatch.setattr("worker.registration.load_registered", load)
    warm, slow = registered(session_factory, "w", "s")
    cache = ModelCache(session_factory, ModelStore(tmp_path), 2, lambda loaded: loaded)
    cache.engines_for(warm)
    results = []
    loaders = [
        threading.Thread(target=lambda: results.append(cache.engines_for(slow))) for _ in range(2)
    ]
    for thread in loaders:
        thread.start()
    assert slow_started.wait(10)
    started = time.monotonic()
    assert cache.engines_for(warm) == "w"  # not blocked by the load in progress
    assert time.monotonic() - started < 1
    release.set()
    for thread in loaders:
        thread.join(10)
    assert results == ["s", "s"] and cache.loads == 2  # one load shared by both callers

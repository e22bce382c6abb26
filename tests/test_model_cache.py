"""The worker's model cache (LRU) and MODEL_PATH's registration semantics."""
import pytest

from covidscan.registration import register_or_select
from db.model_store import ModelStore
from db.registry import list_models, set_default, get_model
from db.session import make_engine, make_session_factory
from tests.test_registry_db import a_model
from worker.model_cache import ModelCache, ModelUnavailable

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


def test_least_recently_used_models_are_evicted_beyond_the_cap(session_factory, tmp_path,
                                                                monkeypatch):
    loads = []

    def fake_load(model, store):  # unit test of the cache's bookkeeping, not of loading
        loads.append(model.version)
        return model.version

    monkeypatch.setattr("covidscan.registration.load_registered", fake_load)
    a, b, c = registered(session_factory, "a", "b", "c")
    cache = ModelCache(session_factory, ModelStore(tmp_path), 2, lambda loaded: f"engine-{loaded}")
    assert [cache.engines_for(i) for i in (a, b, a, a, b)] == \
        ["engine-a", "engine-b", "engine-a", "engine-a", "engine-b"]
    assert loads == ["a", "b"]
    cache.engines_for(c)  # evicts a, the least recently used
    assert cache.loaded() == [b, c]
    cache.engines_for(a)
    assert loads == ["a", "b", "c", "a"] and cache.loaded() == [c, a]
    with pytest.raises(ModelUnavailable, match="no longer registered"):
        cache.engines_for("0" * 32)
    with pytest.raises(ValueError, match="capacity"):
        ModelCache(session_factory, ModelStore(tmp_path), 0, str)


def test_model_path_registers_once_and_never_replaces_a_chosen_default(session_factory,
                                                                       tmp_path, tiny_model_path):
    store = ModelStore(tmp_path / "store")
    first = register_or_select(session_factory, store, tiny_model_path)
    assert (first.name, first.is_default, first.source) == \
        ("tiny_ct", True, f"MODEL_PATH {tiny_model_path}")
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


def test_an_identical_copy_already_in_the_store_is_reused(session_factory, tmp_path,
                                                          tiny_model_path):
    """Two workers registering one MODEL_PATH at once: the second finds the first's copy."""
    from models.loader import file_sha256

    store = ModelStore(tmp_path / "store")
    version = file_sha256(tiny_model_path)[:12]
    stored = store.put(tiny_model_path, "tiny_ct", version)
    model = register_or_select(session_factory, store, tiny_model_path)
    assert model.stored_path == stored and store.path(stored).exists()
    with pytest.raises(FileExistsError):
        store.put(tiny_model_path, "tiny_ct", version)

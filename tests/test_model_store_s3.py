"""The model store mirrored to a real S3 server (SeaweedFS): a model registered on one host
is fetched whole, checked, by a host whose MODEL_STORE_DIR is empty."""

import uuid

import pytest

from core.sweep import delete_orphan_blobs
from covidscan.settings import load_settings
from db.blobs import open_blob_store
from db.model_store import open_model_store
from db.registry import ModelExists, find_model
from db.session import make_engine, make_session_factory
from models.loader import ModelLoadError
from worker.registration import Registration, load_registered, register_model

pytestmark = [pytest.mark.integration, pytest.mark.database]


@pytest.fixture
def settings(s3_server, tmp_path):
    return load_settings(s3_server.env(prefix=f"models-{uuid.uuid4().hex[:8]}"))


@pytest.fixture
def session_factory(database_url):
    from db import migrate

    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def objects(store):
    return sorted(o["Key"][len(store.prefix) :] for o in store.bucket.objects(store.prefix))


def test_a_model_registered_on_one_host_is_fetched_checked_and_removed_on_another(
    settings, session_factory, tmp_path, tiny_model_path
):
    store_a = open_model_store(tmp_path / "a", settings.blob_store)
    store_b = open_model_store(tmp_path / "b", settings.blob_store)
    model = register_model(
        session_factory, store_a, Registration(path=tiny_model_path, name="tiny", version="v1")
    )
    assert objects(store_a) == ["tiny/v1/tiny_ct.h5"]
    assert not (tmp_path / "b").exists()

    loaded = load_registered(model, store_b)
    fetched = tmp_path / "b" / "tiny" / "v1" / "tiny_ct.h5"
    assert loaded.info.sha256 == model.sha256
    assert fetched.read_bytes() == (tmp_path / "a" / model.stored_path).read_bytes()
    assert not [p for p in (tmp_path / "b" / "tiny").iterdir() if p.name.startswith(".")]

    # A calibration set written beside the model on A reaches B, which has the model already.
    (tmp_path / "a" / "tiny" / "v1" / "calibration.npz").write_bytes(b"set")
    store_a.put_beside(model.stored_path, "calibration.npz")
    store_b.resolve(model.stored_path)
    assert (tmp_path / "b" / "tiny" / "v1" / "calibration.npz").read_bytes() == b"set"

    # The orphan sweep of the job blobs in the same prefix leaves the models alone.
    blobs = open_blob_store(settings.blob_dir, settings.blob_store)
    assert "models" not in blobs.job_ids_older_than(-3600)
    assert delete_orphan_blobs(session_factory, blobs, -3600) == 0
    assert objects(store_a) == ["tiny/v1/calibration.npz", "tiny/v1/tiny_ct.h5"]

    store_b.delete(model.stored_path)
    assert objects(store_a) == [] and not (tmp_path / "b" / "tiny").exists()


def test_a_tampered_object_is_refused_and_nothing_is_left_behind(
    settings, session_factory, tmp_path, tiny_model_path
):
    store_a = open_model_store(tmp_path / "a", settings.blob_store)
    model = register_model(
        session_factory, store_a, Registration(path=tiny_model_path, name="tiny", version="v2")
    )
    key = store_a.prefix + "tiny/v2/tiny_ct.h5"
    store_a.bucket.s3.put_object(Bucket=store_a.bucket.bucket, Key=key, Body=b"not the model")

    store_b = open_model_store(tmp_path / "b", settings.blob_store)
    with pytest.raises(ModelLoadError, match="tiny:v2 has changed since it was registered"):
        load_registered(model, store_b)
    assert list((tmp_path / "b" / "tiny").iterdir()) == []  # no model, no staging folder


def test_a_name_and_version_taken_in_the_bucket_is_refused_on_another_host(
    settings, tmp_path, tiny_model_path
):
    open_model_store(tmp_path / "a", settings.blob_store).put(tiny_model_path, "tiny", "v3")
    with pytest.raises(FileExistsError, match="tiny/v3 already exists"):
        open_model_store(tmp_path / "b", settings.blob_store).put(tiny_model_path, "tiny", "v3")
    assert not (tmp_path / "b" / "tiny" / "v3").exists()


def test_a_registration_that_loses_the_race_keeps_the_copy_the_winner_recorded(
    settings, session_factory, tmp_path, tiny_model_path
):
    """Two workers register MODEL_PATH at once on one host: the first copies the file in,
    the second finds that copy, reuses it and records its row first. The first, refused,
    must not delete a copy a registered model now names."""
    request = Registration(path=tiny_model_path, name="tiny", version="v4")
    mirrored = type(open_model_store(tmp_path / "a", settings.blob_store))

    class RacedStore(mirrored):
        def put(self, source, name, version):
            relative = super().put(source, name, version)
            # The other worker, between this copy and this worker's row:
            register_model(session_factory, mirrored(tmp_path / "a", settings.blob_store), request)
            return relative

    with pytest.raises(ModelExists, match="tiny:v4 is already registered"):
        register_model(session_factory, RacedStore(tmp_path / "a", settings.blob_store), request)
    with session_factory() as session:
        model = find_model(session, "tiny:v4")
    assert (tmp_path / "a" / model.stored_path).exists()
    store_b = open_model_store(tmp_path / "b", settings.blob_store)
    assert objects(store_b) == ["tiny/v4/tiny_ct.h5"]
    assert load_registered(model, store_b).info.sha256 == model.sha256

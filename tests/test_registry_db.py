"""The registry's data functions against a real, migrated database."""

import pytest

from db.jobs import JobOptions, NewScan, create_job
from db.models import Model, ScanStatus, new_id
from db.registry import (
    ModelExists,
    ModelInUse,
    ModelNotFound,
    RegistryError,
    add_model,
    default_model,
    find_model,
    get_model,
    list_models,
    models_with_sha256,
    parse_ref,
    remove_model,
    set_default,
)
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.database


def a_model(name="m", version="1", sha="a" * 64) -> Model:
    return Model(
        name=name,
        version=version,
        sha256=sha,
        format="keras2-h5",
        input_height=32,
        input_width=32,
        classes=["COVID", "NonCOVID"],
        positive_class="COVID",
        preprocessing="seed-v1",
        trained=True,
        source="test",
        stored_path=f"{name}/{version}/model.h5",
    )


@pytest.fixture
def session(database_url):
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        yield session
    engine.dispose()


def test_refs_parse_and_bad_refs_are_refused():
    assert parse_ref("resnet") == ("resnet", None)
    assert parse_ref("resnet:2") == ("resnet", "2")
    for bad in ("", ":2", "resnet:"):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_add_find_and_default(session):
    first = add_model(session, a_model(version="1"))
    second = add_model(session, a_model(version="2", sha="b" * 64), make_default=True)
    session.commit()
    assert default_model(session) == second
    assert find_model(session, "m:1") == first
    assert find_model(session, "m") == second  # the default wins for a bare name
    set_default(session, first)
    session.commit()
    assert default_model(session) == first and not second.is_default
    assert [m.version for m in list_models(session)] == ["1", "2"]
    assert models_with_sha256(session, "b" * 64) == [second]
    assert find_model(session, "other") is None
    with pytest.raises(ModelNotFound, match="'other:3'"):
        get_model(session, "other:3")


def test_name_and_version_are_unique(session):
    add_model(session, a_model())
    with pytest.raises(ModelExists, match="m:1"):
        add_model(session, a_model(sha="c" * 64))


def test_remove_is_refused_while_a_pinned_job_is_unfinished(session):
    model = add_model(session, a_model())
    job = create_job(session, [NewScan("a.png", "k/0", 1)], new_id(), JobOptions(model=model))
    session.commit()
    assert (job.model_name, job.model_version, job.model_sha256) == ("m", "1", "a" * 64)
    with pytest.raises(ModelInUse, match=job.id):
        remove_model(session, model)
    job.scans[0].status = ScanStatus.SUCCEEDED
    session.commit()
    remove_model(session, model)
    session.commit()
    session.expire_all()
    assert list_models(session) == []
    assert job.model_id is None and job.model_sha256 == "a" * 64  # identity kept

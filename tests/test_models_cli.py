"""``covidscan models``: add, list, set-default and remove against a real database and store."""

import json

import pytest
from click.testing import CliRunner

from cli.main import main
from db.jobs import JobOptions, NewScan, create_job
from db.models import ScanStatus, new_id
from db.registry import get_model
from db.session import make_engine, make_session_factory

pytestmark = pytest.mark.database


@pytest.fixture
def registry_env(tmp_path, database_url):
    return {
        "DATABASE_URL": database_url,
        "MODEL_STORE_DIR": str(tmp_path / "store"),
        "MODEL_PATH": "",
    }


def run(env, *args):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def listed(env):
    result = run(env, "models", "list", "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_add_list_set_default_remove(registry_env, tiny_model_path, tmp_path):
    assert run(registry_env, "models", "list").output.startswith("no registered models")
    first = run(
        registry_env, "models", "add", str(tiny_model_path), "--name", "tiny", "--version", "1"
    )
    assert first.exit_code == 0, first.output
    second = run(
        registry_env,
        "models",
        "add",
        str(tiny_model_path),
        "--name",
        "tiny",
        "--version",
        "2",
        "--classes",
        "NonCOVID,COVID",
        "--default",
    )
    assert second.exit_code == 0, second.output
    rows = listed(registry_env)
    assert [(r["version"], r["default"], r["positive_class"]) for r in rows] == [
        ("1", False, "COVID"),
        ("2", True, "COVID"),
    ]
    assert rows[1]["classes"] == ["NonCOVID", "COVID"] and rows[0]["format"] == "keras2-h5"
    assert rows[0]["input_size"] == [32, 32] and rows[0]["trained"] is True
    stored = tmp_path / "store" / "tiny" / "1" / tiny_model_path.name
    assert stored.read_bytes() == tiny_model_path.read_bytes()
    assert run(registry_env, "models", "set-default", "tiny:1").exit_code == 0
    assert [r["default"] for r in listed(registry_env)] == [True, False]
    removed = run(registry_env, "models", "remove", "tiny:1")
    assert removed.exit_code == 0, removed.output
    assert not stored.parent.exists()
    assert [r["version"] for r in listed(registry_env)] == ["2"]
    assert audited(registry_env["DATABASE_URL"]) == [
        ("model.add", {"model": "tiny:1", "default": False, "trusted_code": False}),
        ("model.add", {"model": "tiny:2", "default": True, "trusted_code": False}),
        ("model.set_default", {"model": "tiny:1"}),
        ("model.remove", {"model": "tiny:1"}),
    ]


def audited(database_url):
    """The model changes in the audit log, oldest first, each by the CLI's user."""
    from sqlalchemy import select

    from db.models import AuditEvent

    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    engine.dispose()
    assert all(e.owner.startswith("cli:") and e.key_id is None for e in events)
    return [(e.action, {k: v for k, v in e.detail.items() if k != "sha256"}) for e in events]


def test_add_refuses_a_file_whose_outputs_do_not_match_the_classes(
    registry_env, tiny_model_path, tmp_path
):
    result = run(
        registry_env,
        "models",
        "add",
        str(tiny_model_path),
        "--name",
        "tiny",
        "--classes",
        "COVID,CAP,Normal",
        "--positive",
        "COVID",
    )
    assert result.exit_code == 1
    assert "2 outputs but 3 classes" in result.output
    assert listed(registry_env) == [] and not (tmp_path / "store" / "tiny").exists()


def test_add_refuses_what_is_not_a_model_and_unsafe_names(registry_env, tmp_path, tiny_model_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    result = run(registry_env, "models", "add", str(junk), "--name", "junk")
    assert result.exit_code == 1 and "cannot load as keras2-h5" in result.output
    bad_name = run(registry_env, "models", "add", str(tiny_model_path), "--name", "../up")
    assert bad_name.exit_code == 1 and "model name '../up'" in bad_name.output
    assert listed(registry_env) == []


def test_duplicate_and_unknown_references_are_named(registry_env, tiny_model_path):
    assert (
        run(
            registry_env, "models", "add", str(tiny_model_path), "--name", "t", "--version", "1"
        ).exit_code
        == 0
    )
    again = run(
        registry_env, "models", "add", str(tiny_model_path), "--name", "t", "--version", "1"
    )
    assert again.exit_code == 1 and "t:1 is already registered" in again.output
    unknown = run(registry_env, "models", "set-default", "nope:9")
    assert unknown.exit_code == 1 and "'nope:9'" in unknown.output
    assert "name the version" in run(registry_env, "models", "remove", "t").output


def test_remove_is_refused_while_a_pinned_job_is_unfinished(registry_env, tiny_model_path):
    assert (
        run(
            registry_env, "models", "add", str(tiny_model_path), "--name", "t", "--version", "1"
        ).exit_code
        == 0
    )
    engine = make_engine(registry_env["DATABASE_URL"])
    with make_session_factory(engine).begin() as session:
        job = create_job(
            session,
            [NewScan("a.png", "k/0", 1)],
            new_id(),
            JobOptions(model=get_model(session, "t:1")),
        )
        job_id = job.id
    refused = run(registry_env, "models", "remove", "t:1")
    assert refused.exit_code == 1 and job_id in refused.output
    with make_session_factory(engine).begin() as session:
        for scan in session.get(type(job), job_id).scans:
            scan.status = ScanStatus.FAILED
    engine.dispose()
    assert run(registry_env, "models", "remove", "t:1").exit_code == 0

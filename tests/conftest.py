"""Fixtures: a real embedded Redis, a real database (SQLite, or PostgreSQL from
DATABASE_URL), a real Celery worker process, and the Flask app."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from sqlalchemy import create_engine, text

from covidscan.settings import normalise_database_url
from db import migrate
from devtools.embedded_redis import EmbeddedRedis
from devtools.embedded_s3 import EmbeddedS3

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("DATABASE_URL", "")


_POSTGRES_SCHEMAS: list[tuple[str, str]] = []


def _postgres_schema_url(url: str) -> str:
    """A new, empty schema in the PostgreSQL database, and a URL whose search_path is it."""
    schema = f"covidscan_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    _POSTGRES_SCHEMAS.append((url, schema))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def fresh_database_url(tmp_path: Path, migrated: bool = True) -> str:
    """An empty database, migrated unless ``migrated`` is False: a new PostgreSQL schema
    when DATABASE_URL names a PostgreSQL database, else a SQLite file."""
    if POSTGRES_URL.startswith("postgres"):
        url = _postgres_schema_url(normalise_database_url("DATABASE_URL", POSTGRES_URL))
    else:
        url = f"sqlite:///{tmp_path / 'covidscan.db'}"
    if migrated:
        migrate.upgrade(url)
    return url


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schemas() -> Iterator[None]:
    """Drop the session's PostgreSQL schemas after everything else has been torn down."""
    yield
    for url, schema in _POSTGRES_SCHEMAS:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[EmbeddedS3]:
    """A real S3-compatible store (SeaweedFS) with one bucket, for the whole session."""
    with EmbeddedS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def database_url(tmp_path) -> str:
    return fresh_database_url(tmp_path)


@pytest.fixture
def app_config(tmp_path, database_url, redis_server) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_server.url,
        "BLOB_DIR": str(tmp_path / "blobs"),
        "BATCH_SIZE": "8",
    }


def create_api_key(
    database_url: str, owner: str = "alice", scopes: str = "submit,read", expires_at=None
) -> str:
    """A new API key in the database, as ``covidscan keys create`` makes one."""
    from db.keys import create_key
    from db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            return create_key(session, owner, scopes, expires_at).token
    finally:
        engine.dispose()


def authorised(test_client, key: str):
    """A Flask test client that sends ``key`` as a Bearer token with every request."""
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return test_client


def keyed_test_clients(app, key: str):
    """Make every ``app.test_client()`` send ``key`` (for tests that open many clients)."""
    from flask.testing import FlaskClient

    class KeyedClient(FlaskClient):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            authorised(self, key)

    app.test_client_class = KeyedClient
    return app


@pytest.fixture
def app(app_config):
    from api import create_app

    return create_app(app_config)


@pytest.fixture
def api_key(app_config) -> str:
    """A submit+read key of an owner of this test's own (rate limits in the shared Redis
    are counted per owner)."""
    return create_api_key(app_config["DATABASE_URL"], owner=f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def client(app, api_key):
    """A test client that sends ``api_key`` (submit, read)."""
    return authorised(app.test_client(), api_key)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    from tests.models import save_tiny_h5

    return save_tiny_h5(tmp_path_factory.mktemp("model") / "tiny_ct.h5")


class WorkerProcess:
    """A real ``celery worker`` subprocess: the local stack's command line, or ``command``."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        name: str = "test-worker@%h",
        command: Optional[list[str]] = None,
        cwd: Path = ROOT,
    ) -> None:
        from devtools.devstack import worker_command

        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            command or worker_command("INFO", name),
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-4000:]}")
            if " ready." in self.log_path.read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def worker_env(config: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "DATABASE_URL")}
    env.update(config)
    env.update(extra)
    if "BLOB_DIR" in env:
        env.setdefault("MODEL_STORE_DIR", str(Path(env["BLOB_DIR"]).parent / "models"))
        env.setdefault("ENGINE_CACHE_DIR", str(Path(env["BLOB_DIR"]).parent / "engine-cache"))
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory, redis_server) -> dict[str, str]:
    """Database and blob store shared by the session's worker and the tests that use it."""
    base = tmp_path_factory.mktemp("stack")
    return {
        "DATABASE_URL": fresh_database_url(base),
        "REDIS_URL": redis_server.url,
        "BLOB_DIR": str(base / "blobs"),
        "MODEL_STORE_DIR": str(base / "models"),
        "BATCH_SIZE": "8",
        "ENGINE_CACHE_DIR": str(base / "engine-cache"),
    }


@pytest.fixture(scope="session")
def worker(stack_config, tiny_model_path, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One real Celery worker serving the tiny H5 model, for the whole session; its
    Prometheus metrics at ``worker.metrics_url``."""
    from devtools.embedded_redis import free_port

    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    metrics_port = free_port()
    process = WorkerProcess(
        worker_env(stack_config, MODEL_PATH=str(tiny_model_path), METRICS_PORT=str(metrics_port)),
        log_path,
    )
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def stack_key(stack_config) -> str:
    """A submit+read key in the session's shared database."""
    return create_api_key(stack_config["DATABASE_URL"], owner="stack")


@pytest.fixture
def stack_client(stack_config, stack_key, worker):
    """A test client of an API that shares the running worker's database and Redis."""
    from api import create_app

    return authorised(create_app(stack_config).test_client(), stack_key)


def wait_for_job(client, job_id: str, timeout: float = 120.0) -> dict:
    """Poll until the job ends; ``client`` is a Flask test client or a covidscan HTTP Client."""
    read = getattr(client, "job", None) or (lambda i: client.get(f"/v1/jobs/{i}").get_json())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = read(job_id)
        if body["status"] in ("succeeded", "partially_succeeded", "failed", "cancelled"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {body}")

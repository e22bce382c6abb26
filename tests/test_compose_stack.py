"""The compose services' own command lines, run on this machine.

docker-compose.yml's migrate command, its gunicorn command for the API and its
`celery ... worker` command twice at once, with the environment compose gives them
except where a value names a place inside the compose network (database, Redis, the
uploads volume, the model). One job over real HTTP must be shared by both workers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from api.schemas import SubmissionOptions
from cli.client import Client, collect_files
from devtools.embedded_redis import EmbeddedRedis, free_port
from devtools.scrape import parse, value
from tests import compose
from tests.conftest import (
    ROOT,
    WorkerProcess,
    create_api_key,
    fresh_database_url,
    wait_for_job,
    worker_env,
)
from tests.images import png_bytes, write_folder
from tests.original_app import original_probabilities

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH_SIZE = 4
SCANS = 6 * BATCH_SIZE
WORKER_NAMES = ("worker@node1", "worker@node2")  # %h is each container's hostname


def service_env(service: dict, **local: str) -> dict[str, str]:
    """The service's compose environment, with ``local`` values for the places it names."""
    environment = dict(service["environment"])
    assert set(local) <= set(environment), f"compose does not set {set(local) - set(environment)}"
    environment.update(local)
    env = worker_env(environment)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def api_places(tmp_path: Path) -> dict[str, str]:
    """The API's tmpfs for gunicorn's metrics, here a folder."""
    folder = tmp_path / "prometheus-multiproc"
    folder.mkdir(exist_ok=True)
    return {"PROMETHEUS_MULTIPROC_DIR": str(folder)}


def worker_metrics_places() -> dict[str, str]:
    """A port of its own for a worker's metrics (in compose each container has 9100)."""
    return {"METRICS_PORT": str(free_port()), "METRICS_HOST": "127.0.0.1"}


def run_healthcheck(service: dict, env: dict[str, str], *replace: tuple[str, str]) -> int:
    argv = compose.healthcheck_shell(service)
    for old, new in replace:
        argv = [part.replace(old, new) for part in argv]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60).returncode


def start_api(service: dict, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = compose.replace_option(
        compose.local_argv(service["command"]), "--bind", f"127.0.0.1:{port}"
    )
    command = compose.replace_option(command, "--workers", "2")  # two cores here
    log = open(log_path, "w")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    python_and_port = (("python", sys.executable), ("127.0.0.1:5000", f"127.0.0.1:{port}"))
    deadline = time.monotonic() + 60
    while run_healthcheck(service, env, *python_and_port) != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"API not ready:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)
    return process, port


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own: the session's worker listens on the shared one and would
    take (and, finding no such scans in its database, drop) this job's chunks."""
    with EmbeddedRedis(tmp_path / "redis", persist=False) as server:
        yield server


@pytest.fixture
def compose_stack(
    tmp_path, own_redis, tiny_model_path, s3_server
) -> Iterator[tuple[str, dict, str]]:
    services = compose.compose_config()["services"]
    places = {
        "DATABASE_URL": fresh_database_url(tmp_path, migrated=False),
        "REDIS_URL": own_redis.url,
        "BATCH_SIZE": str(BATCH_SIZE),
        **s3_server.env(prefix=f"compose-{tmp_path.name}"),
    }
    migrate = subprocess.run(
        compose.local_argv(services["migrate"]["command"]),
        cwd=ROOT,
        env=service_env(services["migrate"], **places),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "database is up to date" in migrate.stdout
    worker_command = compose.local_argv(services["worker"]["command"])
    workers_env = service_env(
        services["worker"],
        **places,
        MODEL_PATH=str(tiny_model_path),
        MODEL_STORE_DIR=str(tmp_path / "model-store"),
    )
    metrics_envs = [dict(workers_env, **worker_metrics_places()) for _ in WORKER_NAMES]
    workers = [
        WorkerProcess(
            env,
            tmp_path / f"{name}.log",
            command=compose.replace_option(worker_command, "--hostname", name),
        )
        for name, env in zip(WORKER_NAMES, metrics_envs)
    ]
    api = None
    try:
        for worker in workers:
            worker.wait_ready()
        for name in WORKER_NAMES:
            health_env = dict(workers_env, HOSTNAME=name.split("@")[1])
            assert run_healthcheck(services["worker"], health_env) == 0, name
        api, port = start_api(
            services["api"],
            service_env(services["api"], **places, **api_places(tmp_path)),
            tmp_path / "api.log",
        )
        # As an operator would: docker compose run --rm api covidscan keys create ...
        created = subprocess.run(
            [sys.executable, "-m", "cli.main", "keys", "create", "--owner", "ward3"],
            cwd=ROOT,
            env=service_env(services["migrate"], **places),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert created.returncode == 0, created.stderr
        yield (
            f"http://127.0.0.1:{port}",
            services,
            created.stdout.strip(),
            [f"http://127.0.0.1:{env['METRICS_PORT']}/metrics" for env in metrics_envs],
        )
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        for worker in workers:
            worker.stop()


def test_two_workers_share_one_job_submitted_over_http(compose_stack, tmp_path):
    url, _, compose_key, worker_metrics = compose_stack
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(SCANS):
        (folder / f"slice_{i:02d}.png").write_bytes(png_bytes(48, seed=i))
    client = Client(url, timeout=60, api_key=compose_key)
    job = client.submit(collect_files([folder]), SubmissionOptions(name="compose"))
    final = wait_for_job(client, job["id"])
    rows = list(client.results(job["id"]))
    assert final["status"] == "succeeded" and final["counts"]["succeeded"] == SCANS, sorted(
        {row["error"] for row in rows if row["error"]}
    )
    assert len(rows) == SCANS and all(0.0 <= r["probability_covid"] <= 1.0 for r in rows)
    by_worker = Counter(row["worker"] for row in rows)
    assert set(by_worker) == set(WORKER_NAMES), by_worker
    # Whole chunks: a chunk is classified by one worker.
    assert all(count % BATCH_SIZE == 0 for count in by_worker.values()), by_worker
    # Each worker's metrics count what it wrote; the API's /metrics (public, as compose sets
    # it) adds up gunicorn's two processes, whichever of them answered each request.
    for metrics_url, name in zip(worker_metrics, WORKER_NAMES):
        samples = parse(requests.get(metrics_url, timeout=10).text)
        assert (
            value(samples, "covidscan_scans_classified_total", status="succeeded")
            == by_worker[name]
        ), name

    def processes_that_answered() -> set[str]:  # prometheus_client writes <type>_<pid>.db
        return {f.stem.rsplit("_", 1)[-1] for f in (tmp_path / "prometheus-multiproc").glob("*.db")}

    sent = 0
    while (len(processes_that_answered()) < 2 or sent < 20) and sent < 500:  # both answered
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        sent += 1
    assert len(processes_that_answered()) == 2
    for _ in range(4):
        samples = parse(requests.get(f"{url}/metrics", timeout=10).text)
        assert value(samples, "covidscan_jobs_submitted_total") == 1
        assert value(samples, "covidscan_scans_submitted_total") == SCANS
        assert (
            value(samples, "covidscan_http_request_duration_seconds_count", route="/healthz")
            == sent
        )
        assert value(samples, "covidscan_scans_waiting") == 0


def test_jobs_sent_before_the_worker_starts_run_on_model_path(
    tmp_path, own_redis, tiny_model_path, s3_server
):
    """The API up before any worker (compose starts them in parallel): a job is never served
    by the untrained default when MODEL_PATH is set. One job arrives before the migration
    has registered the model (resolved when its first scan is classified), one after (pinned
    at submission); the worker starts last."""
    services = compose.compose_config()["services"]
    places = {
        "DATABASE_URL": fresh_database_url(tmp_path),
        "REDIS_URL": own_redis.url,
        "BATCH_SIZE": str(BATCH_SIZE),
        **s3_server.env(prefix=f"early-{tmp_path.name}"),
    }
    model_places = dict(
        places, MODEL_PATH=str(tiny_model_path), MODEL_STORE_DIR=str(tmp_path / "model-store")
    )
    slices = write_folder(tmp_path / "slices", 6, size=40)
    api, port = start_api(
        services["api"],
        service_env(services["api"], **places, **api_places(tmp_path)),
        tmp_path / "api.log",
    )
    worker = None
    try:
        client = Client(
            f"http://127.0.0.1:{port}", timeout=60, api_key=create_api_key(places["DATABASE_URL"])
        )
        early = client.submit(
            collect_files([tmp_path / "slices"]), SubmissionOptions(name="before-migrate")
        )
        assert early["model"] is None  # nothing registered yet: pinned when it runs
        migrate = subprocess.run(
            compose.local_argv(services["migrate"]["command"]),
            cwd=ROOT,
            env=service_env(services["migrate"], **model_places),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "MODEL_PATH is registered as tiny_ct:" in migrate.stdout
        late = client.submit(
            collect_files([tmp_path / "slices"]), SubmissionOptions(name="after-migrate")
        )
        assert late["model"]["name"] == "tiny_ct"  # pinned at submission
        worker = WorkerProcess(
            service_env(services["worker"], **model_places, **worker_metrics_places()),
            tmp_path / "worker.log",
            command=compose.replace_option(
                compose.local_argv(services["worker"]["command"]), "--hostname", "worker@node1"
            ),
        )
        worker.wait_ready()
        finished = [wait_for_job(client, job["id"]) for job in (early, late)]
        rows = [list(client.results(job["id"])) for job in (early, late)]
    finally:
        api.terminate()
        api.wait(30)
        if worker is not None:
            worker.stop()
    reference = original_probabilities(tiny_model_path, slices)
    for job, results in zip(finished, rows):
        assert job["status"] == "succeeded" and job["model"]["name"] == "tiny_ct", job
        assert {r["filename"] for r in results} == set(reference)
        for row in results:
            assert row["model_name"] == "tiny_ct", row
            assert abs(row["probability_covid"] - reference[row["filename"]]) <= 1e-4, row

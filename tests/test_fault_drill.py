"""The fault drill, on the production shape: the API under gunicorn, two workers and the
migration with docker-compose.yml's own command lines, Redis with its append-only file,
PostgreSQL when DATABASE_URL names one (else SQLite).

One job of SCANS small slices; while it runs, three ``kill -9``s of workers that hold
leases (each restarted at once, as compose's ``restart: unless-stopped`` would), a Redis
restart after SIGTERM and one after SIGKILL. Every scan must succeed with exactly one
result write (a counter on the row, incremented by every write), the scans a killed worker
held must be back on a live worker within RECOVERY_LIMIT seconds, and the job must end
within 60 s of the last fault. Timings are printed (``pytest -s``) for the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pytest
from sqlalchemy import create_engine, func, select

from api.schemas import SubmissionOptions
from cli.client import Client
from db.models import Scan, ScanStatus
from devtools.embedded_redis import EmbeddedRedis
from tests import compose
from tests.conftest import ROOT, WorkerProcess, create_api_key, fresh_database_url
from tests.images import png_bytes, zip_bytes
from tests.test_compose_stack import api_places, service_env, start_api, worker_metrics_places

pytestmark = pytest.mark.integration

SCANS = 1200
LEASE_SECONDS, SWEEP_INTERVAL = 8, 2
RECOVERY_LIMIT = 30  # the guarantee: a dead worker's scans run again within 30 s
FINISH_LIMIT = 60  # the job ends within 60 s of the last fault
NAMES = ("worker@drill1", "worker@drill2")
KILL_TRIES = 3


class Drill:
    """The stack under test and the faults done to it, with a log of when."""

    def __init__(self, tmp_path: Path, tiny_model_path: Path, s3_env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.services = compose.compose_config()["services"]
        self.redis = EmbeddedRedis(tmp_path / "redis", persist=True).start()
        self.places = {
            "DATABASE_URL": fresh_database_url(tmp_path, migrated=False),
            "REDIS_URL": self.redis.url,
            "BATCH_SIZE": "8",
            **s3_env,
        }
        self.worker_env = service_env(
            self.services["worker"],
            **self.places,
            MODEL_PATH=str(tiny_model_path),
            MODEL_STORE_DIR=str(tmp_path / "model-store"),
            MAX_BATCH_SIZE="8",
            LEASE_SECONDS=str(LEASE_SECONDS),
            SWEEP_INTERVAL=str(SWEEP_INTERVAL),
        )
        self.sql = create_engine(
            self.places["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
        )
        self.workers: dict[str, WorkerProcess] = {}
        self.starts = 0
        self.api: Optional[subprocess.Popen] = None
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()

    def note(self, what: str) -> float:
        now = time.monotonic()
        self.events.append((now - self.t0, what))
        print(f"[drill {now - self.t0:6.1f} s] {what}", flush=True)
        return now

    def migrate(self) -> None:
        env = service_env(
            self.services["migrate"],
            **self.places,
            MODEL_PATH=self.worker_env["MODEL_PATH"],
            MODEL_STORE_DIR=self.worker_env["MODEL_STORE_DIR"],
        )
        done = subprocess.run(
            compose.local_argv(self.services["migrate"]["command"]),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start_worker(self, name: str) -> WorkerProcess:
        self.starts += 1
        command = compose.replace_option(
            compose.local_argv(self.services["worker"]["command"]), "--hostname", name
        )
        worker = WorkerProcess(
            dict(self.worker_env, **worker_metrics_places()),
            self.tmp_path / f"{name}-{self.starts}.log",
            command=command,
        )
        self.workers[name] = worker
        return worker

    def start_api(self) -> str:
        self.api, port = start_api(
            self.services["api"],
            service_env(self.services["api"], **self.places, **api_places(self.tmp_path)),
            self.tmp_path / "api.log",
        )
        return f"http://127.0.0.1:{port}"

    def counts(self) -> dict[str, int]:
        with self.sql.connect() as conn:
            rows = conn.execute(select(Scan.status, func.count()).group_by(Scan.status)).all()
        return {ScanStatus(status).value: count for status, count in rows}

    def leases_of(self, name: str) -> list[str]:
        """Scans the running process of this worker holds a lease on (owner ``name/pid/…``)."""
        owner = f"{name}/{self.workers[name].process.pid}/%"
        with self.sql.connect() as conn:
            return list(
                conn.scalars(
                    select(Scan.id).where(
                        Scan.status == ScanStatus.RUNNING, Scan.lease_owner.like(owner)
                    )
                )
            )

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"drill: {what} did not happen in {timeout} s; counts {self.counts()}"
                )
            time.sleep(0.02)

    def done(self) -> int:
        return self.counts().get("succeeded", 0)

    def kill_worker(
        self, order: tuple[str, ...], at_least: int, once_working: str = ""
    ) -> Recovery:
        """kill -9 ``order[0]`` once past ``at_least`` scans while it holds leases (and, if
        given, the worker ``once_working`` holds leases too); restart it at once.

        A batch can end between the look at its leases and the kill; then the kill caught
        nothing to recover and the next worker in ``order`` is killed the same way.
        Returns a watch on the recovery of the scans the killed worker held.
        """
        for attempt in range(KILL_TRIES):
            name = order[attempt % len(order)]
            partner = once_working if attempt == 0 else ""
            self.wait(
                f"{name} holding leases after {at_least} scans",
                lambda name=name, partner=partner: (
                    self.done() >= at_least
                    and len(self.leases_of(name)) > 0
                    and (not partner or len(self.leases_of(partner)) > 0)
                ),
            )
            victim = self.workers[name]
            dead_owner = f"{name}/{victim.process.pid}/%"
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            killed_at = self.note(f"kill -9 {name} at {self.done()} succeeded")
            stranded = self.leases_of(name)
            self.note(f"{name} died holding {len(stranded)} leased scans")
            victim.log.close()
            self.start_worker(name)
            if stranded:
                return Recovery(self, killed_at, stranded, dead_owner)
        raise AssertionError(f"{KILL_TRIES} kills caught no worker mid-batch")

    def restart_redis(self, how: int, at_least: int) -> float:
        self.wait(f"{at_least} scans before the Redis restart", lambda: self.done() >= at_least)
        process = self.redis.process
        process.send_signal(how)
        process.wait(30)
        at = self.note(f"Redis stopped with {signal.Signals(how).name} at {self.done()} succeeded")
        self.redis.start()
        self.note("Redis is back (append-only file)")
        return at

    def stop(self) -> None:
        if self.api is not None:
            self.api.terminate()
            self.api.wait(30)
        for worker in self.workers.values():
            worker.stop()
        self.redis.stop()
        self.sql.dispose()


class Recovery(threading.Thread):
    """Watches a killed worker's scans until each is leased by a live worker or finished."""

    def __init__(
        self, drill: Drill, killed_at: float, stranded: list[str], dead_owner: str
    ) -> None:
        super().__init__(daemon=True)
        self.drill, self.killed_at, self.stranded = drill, killed_at, stranded
        self.dead_owner = dead_owner
        self.seconds: Optional[float] = None
        self.start()

    def run(self) -> None:
        deadline = self.killed_at + RECOVERY_LIMIT + 60
        while time.monotonic() < deadline:
            with self.drill.sql.connect() as conn:
                waiting = conn.scalar(
                    select(func.count()).where(
                        Scan.id.in_(self.stranded),
                        (Scan.status == ScanStatus.QUEUED)
                        | (
                            (Scan.status == ScanStatus.RUNNING)
                            & Scan.lease_owner.like(self.dead_owner)
                        ),
                    )
                )
            if not waiting:
                self.seconds = time.monotonic() - self.killed_at
                return
            time.sleep(0.2)


@pytest.fixture
def drill(tmp_path, tiny_model_path, s3_server):
    built = Drill(tmp_path, tiny_model_path, s3_server.env(prefix=f"drill-{tmp_path.name}"))
    try:
        yield built
    finally:
        built.stop()


def test_every_scan_succeeds_exactly_once_through_kills_and_redis_restarts(drill, tmp_path):
    drill.migrate()
    for name in NAMES:
        drill.start_worker(name)
    for worker in drill.workers.values():
        worker.wait_ready()
    key = create_api_key(drill.places["DATABASE_URL"], owner="drill")
    client = Client(drill.start_api(), timeout=120, api_key=key)
    archive = tmp_path / "slices.zip"
    archive.write_bytes(
        zip_bytes((f"slice_{i:04d}.png", png_bytes(32, seed=i)) for i in range(SCANS))
    )
    drill.note("workers and API ready; submitting")
    job = client.submit([archive], SubmissionOptions(name="drill"))
    drill.note(f"job {job['id']} accepted: {job['counts']['total']} scans")

    a, b = NAMES
    # Both workers dead at once for a while (B is killed before A is back), then Redis
    # restarted twice under the restarted workers, then A killed again with B working.
    kills = [drill.kill_worker((a, b), at_least=SCANS // 20)]
    kills.append(drill.kill_worker((b, a), at_least=SCANS // 10))
    drill.restart_redis(signal.SIGTERM, at_least=SCANS // 4)
    drill.restart_redis(signal.SIGKILL, at_least=SCANS // 3)
    kills.append(drill.kill_worker((a, b), at_least=SCANS // 2, once_working=b))
    last_fault = kills[-1].killed_at
    assert drill.done() < SCANS, "the job ended before the drill's last fault: it proves nothing"
    for kill in kills:
        kill.join()
        assert kill.seconds is not None, "a dead worker's scans were never taken again"
        drill.note(
            f"{len(kill.stranded)} scans of a worker killed at "
            f"{kill.killed_at - drill.t0:.1f} s were taken again "
            f"{kill.seconds:.1f} s after its death"
        )
        assert kill.seconds <= RECOVERY_LIMIT

    drill.wait(
        "the job's end",
        lambda: drill.done() + drill.counts().get("failed", 0) == SCANS,
        timeout=FINISH_LIMIT + 30,
    )
    finished = drill.note("every scan has a result")
    final = client.job(job["id"])
    with drill.sql.connect() as conn:
        writes = conn.execute(
            select(Scan.result_writes, func.count()).group_by(Scan.result_writes)
        ).all()
        attempts = dict(
            conn.execute(select(Scan.attempts, func.count()).group_by(Scan.attempts)).all()
        )
    drill.note(f"result writes per scan: {dict(writes)}; attempts per scan: {attempts}")
    assert final["status"] == "succeeded", final
    assert final["counts"]["succeeded"] == SCANS
    assert dict(writes) == {1: SCANS}  # every scan written exactly once
    stranded = {i for kill in kills for i in kill.stranded}
    with drill.sql.connect() as conn:  # each ran again; one stranded twice has 3 attempts
        retried = conn.scalars(select(Scan.attempts).where(Scan.id.in_(stranded))).all()
    assert len(retried) == len(stranded) and min(retried) >= 2, retried
    drill.note(f"job finished {finished - last_fault:.1f} s after the last fault")
    assert finished - last_fault <= FINISH_LIMIT

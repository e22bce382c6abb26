"""``make run``: the whole stack on one machine.

Applies migrations, creates an administrator's API key on the first start (printed
once, saved where the CLI finds it), starts an embedded Redis (unless REDIS_URL is set),
one Celery worker, the sweep (recovery and retention), the DICOM listener and the API, and
stops all of it on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Optional

import requests

from covidscan.settings import ConfigError, Settings, load_settings
from db import migrate
from db.audit import record
from db.keys import authenticate, create_key
from db.models import Model
from db.session import make_engine, make_session_factory
from devtools.embedded_redis import EmbeddedRedis, free_port, stored_password

ADMIN_OWNER = "admin"


def saved_key_works(settings: Settings) -> bool:
    """Whether the key in ``API_KEY_FILE`` is a usable key of this database."""
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return authenticate(session, settings.api_key_file.read_text().strip()) is not None
    finally:
        engine.dispose()


def ensure_admin_key(settings: Settings) -> Optional[str]:
    """On the first start, create an administrator's key and save it to ``API_KEY_FILE``
    (mode 0600), like a notebook server's token. Returns the new key, or None when the
    file already exists."""
    path = settings.api_key_file
    if path.exists():
        return None
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            new = create_key(session, ADMIN_OWNER, "admin")
            session.flush()
            record(
                session,
                "key.create",
                key_id=None,
                owner="make-run",
                detail={"key_id": new.row.id, "key_owner": ADMIN_OWNER, "scopes": "admin"},
            )
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(new.token + "\n")
    return new.token


def _stored_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in ``path``; on first use ``make()``, saved with mode 0600."""
    path = Path(path)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    return secret


def stored_webhook_secret(path: Path) -> str:
    """The ``whsec_`` secret kept in ``path`` (mode 0600), made on first use."""
    return _stored_secret(
        path, lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    )


def stored_phi_key(path: Path) -> str:
    """The PHI_KEY kept in ``path`` (mode 0600): the base64 of 32 random bytes, made on first
    use. Losing it loses what it sealed (destinations' credentials)."""
    return _stored_secret(path, lambda: base64.b64encode(secrets.token_bytes(32)).decode())


def worker_command(loglevel: str = "INFO", name: str = "worker1@%h") -> list[str]:
    """The worker command line the local stack, the tests and compose share.

    Threads, not forked processes: one model per process, WORKER_CONCURRENCY task threads
    (read by the worker from its settings) feeding one batcher.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool",
        "threads",
        "--queues",
        "covidscan",
        "--loglevel",
        loglevel,
        "--hostname",
        name,
        "--without-gossip",
        "--without-mingle",
    ]


def sweep_command() -> list[str]:
    """Recovery and retention every SWEEP_INTERVAL (``covidscan sweep``)."""
    return [sys.executable, "-m", "cli.main", "sweep"]


def dicom_command(port: int, owner: str = ADMIN_OWNER, ae_title: str = "COVIDSCAN") -> list[str]:
    """The DICOM gateway (``covidscan dicom-listen``) as ``make run`` serves it: on the
    loopback, its jobs owned by the administrator whose key ``make run`` made."""
    return [
        sys.executable,
        "-m",
        "cli.main",
        "dicom-listen",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ae-title",
        ae_title,
        "--owner",
        owner,
    ]


def api_command(
    port: int, host: str = "127.0.0.1", threads: int = 16, max_body_bytes: int = 512 * 1024**2
) -> list[str]:
    """The API as ``make run`` serves it: waitress, with nothing in front of it.

    Waitress reads every request whole, headers and body, in its event loop before a
    thread runs the app, so clients that send slowly (or half a request and stop) hold a
    connection, not a thread; ``--channel-timeout`` drops them after a minute of silence.
    Under docker compose nginx does that in front of gunicorn (:func:`gunicorn_command`).
    Bodies are read 256 KiB at a time rather than waitress's 8 KiB: a 14 MB part of an
    upload then takes about 55 reads instead of 1,700, and the API spent 12 % less CPU
    receiving 512 slices.
    """
    return [
        sys.executable,
        "-m",
        "waitress",
        f"--listen={host}:{port}",
        f"--threads={threads}",
        "--channel-timeout=60",
        "--connection-limit=1000",
        "--recv-bytes=262144",
        f"--max-request-body-size={max_body_bytes}",
        "--ident=covidscan",
        "--call",
        "api:create_app",
    ]


def gunicorn_command(port: int, host: str = "0.0.0.0", workers: int = 4) -> list[str]:
    """The API behind the nginx front (docker compose): gunicorn's threaded workers.

    nginx buffers each request whole before passing it on, so gunicorn's threads only
    ever see complete requests.
    """
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        "4",
        "--timeout",
        "300",
        "--access-logfile",
        "-",
        "api:create_app()",
    ]


class Stack:
    def __init__(self, settings: Settings, output: Optional[IO[str]] = None) -> None:
        """``output``: where the children's logs go (default: this terminal). Local state
        (embedded Redis, generated secrets) lives in ``settings.var_dir``."""
        self.settings = settings
        self.var_dir = settings.var_dir
        self.output = output
        self.redis: Optional[EmbeddedRedis] = None
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = threading.Event()
        self.model: Optional[Model] = (
            None  # the registered MODEL_PATH model, once start() has registered it
        )
        self.metrics_ports: dict[str, int] = {}  # the worker's and the sweep's METRICS_PORT

    def start(self) -> None:
        """Migrate and register MODEL_PATH, then start Redis, the worker and the API.

        MODEL_PATH is registered here, before the API accepts a job, so that every job is
        pinned to it at submission instead of waiting for the worker to load it.
        """
        from worker.registration import register_configured_model

        print(f"covidscan: database {self.settings.database_url}")
        migrate.upgrade(self.settings.database_url)
        self._announce_access()
        if self.settings.model_path is not None:
            print(f"covidscan: registering MODEL_PATH {self.settings.model_path}…", flush=True)
            self.model = register_configured_model(self.settings)
        env = dict(os.environ)
        if not self.settings.was_set("redis_url"):
            # A password made on first start, kept in var/ (mode 0600), carried in REDIS_URL.
            password = stored_password(self.var_dir / "redis-password")
            self.redis = EmbeddedRedis(self.var_dir / "redis", password=password).start()
            env["REDIS_URL"] = self.redis.url
            print(
                f"covidscan: embedded Redis on {self.redis.shown_url} "
                f"(password in {self.var_dir / 'redis-password'})"
            )
        env.update(DATABASE_URL=self.settings.database_url, BLOB_DIR=str(self.settings.blob_dir))
        if self.settings.webhook_secret is None:
            # Made on first start, kept in var/ (mode 0600): signs the events of callback URLs.
            env["WEBHOOK_SECRET"] = stored_webhook_secret(self.var_dir / "webhook-secret")
            print(
                f"covidscan: webhooks are signed with the secret in "
                f"{self.var_dir / 'webhook-secret'}"
            )
        if self.settings.phi_key is None:
            # Made on first start, kept in var/ (mode 0600): seals destinations' credentials.
            env["PHI_KEY"] = stored_phi_key(self.var_dir / "phi-key")
            print(f"covidscan: PHI_KEY is kept in {self.var_dir / 'phi-key'}")
        self._spawn(
            "worker",
            worker_command(self.settings.log_level),
            self._metrics_env(env, "worker", self.settings.metrics_port),
        )
        self._spawn("sweep", sweep_command(), self._metrics_env(env, "sweep"))
        if self.settings.dicom_port:
            self._spawn(
                "dicom", dicom_command(self.settings.dicom_port), self._metrics_env(env, "dicom")
            )
        self._spawn(
            "api",
            api_command(
                self.settings.port,
                self.settings.api_host,
                max_body_bytes=self.settings.max_upload_bytes,
            ),
            env,
        )

    def _metrics_env(self, env: dict[str, str], name: str, port: int = 0) -> dict[str, str]:
        """``env`` with a METRICS_PORT of the child's own (METRICS_PORT, else a free one) and
        without PROMETHEUS_MULTIPROC_DIR (single processes; only a gunicorn API needs it)."""
        port = port or free_port()
        self.metrics_ports[name] = port
        child = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        child["METRICS_PORT"] = str(port)
        return child

    def dicom_line(self) -> str:
        """Where a PACS sends studies, for the banner (empty with DICOM_PORT=0)."""
        port = self.settings.dicom_port
        if not port:
            return ""
        return (
            f"  DICOM: COVIDSCAN@127.0.0.1:{port} (C-STORE in, C-ECHO; jobs owned by "
            f"{ADMIN_OWNER})\n"
        )

    def metrics_lines(self) -> str:
        """Where each process of the stack serves its Prometheus metrics."""
        host = self.settings.metrics_host
        access = (
            "public"
            if self.settings.metrics_access == "public"
            else "a key with the metrics or admin scope"
        )
        lines = [f"  metrics: {self.base_url}/metrics ({access})"]
        lines += [
            f"           http://{host}:{port}/metrics ({name})"
            for name, port in self.metrics_ports.items()
        ]
        return "\n".join(lines) + "\n"

    def _announce_access(self) -> None:
        if not self.settings.auth_enabled:
            print(
                "covidscan: WARNING: AUTH=off: NO AUTHENTICATION. Anyone on this machine "
                "is an administrator and sees every job.",
                file=sys.stderr,
                flush=True,
            )
            return
        key = ensure_admin_key(self.settings)
        path = self.settings.api_key_file
        if key is not None:
            print(
                f"covidscan: created an administrator's API key (shown once, saved to "
                f"{path}, mode 0600):\n\n    {key}\n",
                flush=True,
            )
        elif saved_key_works(self.settings):
            print(f"covidscan: API key in {path}", flush=True)
        else:
            print(
                f"covidscan: WARNING: the key in {path} is not a valid key of this database "
                "(revoked, expired, or from another database); delete the file and restart "
                "to get a new one",
                file=sys.stderr,
                flush=True,
            )

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=self.output,
            start_new_session=True,
        )
        self.children.append((name, process))

    def wait_ready(self, timeout: float = 600.0) -> bool:
        """Wait until the API is ready and a worker has its default model warm.

        The first start converts (and, for ``auto`` or ``int8``, quantizes and times) the
        model's engines, which is why the default wait is long.
        """
        url = f"{self.base_url}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if self.exited():
                return False
            try:
                answer = requests.get(url, timeout=2)
                if answer.status_code == 200 and (answer.json()["workers"]["ready"] or 0) > 0:
                    return True
            except (requests.RequestException, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.3)
        return False

    @property
    def base_url(self) -> str:
        host = self.settings.api_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.settings.port}"

    def exited(self) -> Optional[str]:
        for name, process in self.children:
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode}"
        return None

    def stop(self) -> None:
        """API first (no new work), then the worker (warm shutdown), then Redis."""
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print(f"covidscan: {name} did not stop in 60 s; killing it", file=sys.stderr)
                process.kill()
                process.wait()
        if self.redis is not None:
            self.redis.stop()


def _model_line(configured) -> str:
    """What serves jobs that name no model, for the start-up banner."""
    if configured is None:
        return (
            "the registry's default (covidscan models list); with none registered, "
            "the untrained default, whose numbers mean nothing"
        )
    if configured.is_default:
        return f"{configured.ref} (MODEL_PATH, the default)"
    return (
        f"the registry's default; MODEL_PATH is registered as {configured.ref} but another "
        "model is the default (covidscan models list)"
    )


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"covidscan: {exc}", file=sys.stderr)
        return 2
    stack = Stack(settings)

    def _on_signal(signum: int, _frame: object) -> None:
        stack.stopping.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    from models.loader import ModelLoadError

    code = 0
    try:
        try:
            stack.start()
        except ModelLoadError as exc:
            print(f"covidscan: MODEL_PATH: {exc}", file=sys.stderr)
            return 2
        if stack.wait_ready():
            model = _model_line(stack.model)
            access = (
                f"sign in with the key in {settings.api_key_file} (the CLI reads it)"
                if settings.auth_enabled
                else "AUTH=off: no sign-in, loopback only"
            )
            print(
                f"\ncovidscan is running: {stack.base_url}\n"
                f"  access: {access}\n"
                f"  model: {model}\n"
                f"  submit: covidscan submit FOLDER --wait   (or POST /v1/jobs)\n"
                f"{stack.dicom_line()}"
                f"{stack.metrics_lines()}"
                "  Ctrl-C stops everything.\n",
                flush=True,
            )
        while not stack.stopping.is_set():
            problem = stack.exited()
            if problem:
                print(f"covidscan: {problem}; stopping the stack", file=sys.stderr)
                code = 1
                break
            stack.stopping.wait(0.5)
    finally:
        print("covidscan: stopping…", flush=True)
        stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())

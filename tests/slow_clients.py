"""Clients that send half a request and stall, and a probe that times /healthz meanwhile."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional


def _connect(host: str, port: int, tls: bool) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    return sock


@contextmanager
def half_requests(host: str, port: int, count: int, tls: bool = False) -> Iterator[list]:
    """``count`` connections: half of them stop inside the headers, half inside the body."""
    sockets = []
    try:
        for i in range(count):
            sock = _connect(host, port, tls)
            head = (
                "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\n"
                "Content-Length: 200000\r\n"
            )
            if i % 2:
                sock.sendall(head.encode() + b"\r\n--x\r\n" + b"a" * 50_000)  # half the body
            else:
                sock.sendall(head.encode()[:60])  # half the headers
            sockets.append(sock)
        time.sleep(0.5)  # let the server pick every one of them up
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def healthz_seconds(
    host: str, port: int, count: int = 5, tls: bool = False, timeout: float = 5.0
) -> list[Optional[float]]:
    """Seconds each of ``count`` GET /healthz took, or None where it failed or timed out."""
    times: list[Optional[float]] = []
    for _ in range(count):
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        start = time.monotonic()
        try:
            conn.request("GET", "/healthz", headers={"Host": "localhost"})
            ok = conn.getresponse().status == 200
            times.append(time.monotonic() - start if ok else None)
        except OSError:
            times.append(None)
        finally:
            conn.close()
    return times

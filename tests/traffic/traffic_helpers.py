"""Helpers for the load balancer tests: backend processes, tables, a load generator."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from listen_ports import free_port

from gitorch.traffic.table import Backend, Route, RoutingTable

HERE = Path(__file__).parent
REPO = HERE.parent.parent
APPS = {
    "ka": HERE / "apps" / "ka_server.py",
    "tcp_echo": HERE / "apps" / "tcp_echo.py",
    "api": REPO / "examples" / "apps" / "api" / "app.py",
}


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"backend on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise AssertionError(f"backend on port {port} did not listen within {timeout}s")


@dataclass
class App:
    """One backend process and the Backend entry that points at it."""

    backend: Backend
    proc: subprocess.Popen[bytes]

    @property
    def id(self) -> str:
        return self.backend.id

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


@dataclass
class Apps:
    """Starts backend processes and stops whatever is left at teardown."""

    started: list[App] = field(default_factory=list)
    counter: int = 0

    def start(self, kind: str = "ka", version: str = "1", weight: int = 100, **env: str) -> App:
        self.counter += 1
        port = free_port()
        ident = f"{kind}-{version}-{self.counter}"
        full_env = {
            **os.environ,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "ID": ident,
            "VERSION": version,
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, str(APPS[kind])],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        app = App(Backend(ident, f"127.0.0.1:{port}", version=version, weight=weight), proc)
        self.started.append(app)
        wait_port(port, proc)
        return app

    def stop_all(self) -> None:
        for app in self.started:
            if app.proc.poll() is None:
                app.proc.kill()
                app.proc.wait(5)


def table(*routes: Route) -> RoutingTable:
    return RoutingTable(MappingProxyType({r.service: r for r in routes}))


def route(
    port: int, backends: Iterable[Backend], protocol: str = "http", service: str = "svc"
) -> Route:
    return Route(service, port, protocol, tuple(backends))


def get(port: int, path: str = "/", method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.005)


@dataclass
class Outcome:
    started: float
    ok: bool
    detail: str  # response body on success, the error otherwise
    method: str = "GET"


class Load:
    """Client threads sending requests without pause until stopped.

    ``keep_alive``: one http.client connection per thread, reused (reopened after an
    error); otherwise a new connection per request.
    """

    def __init__(
        self,
        port: int,
        threads: int = 4,
        keep_alive: bool = True,
        path: str = "/",
        post_every: int = 0,
    ) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.path = path
        self.post_every = post_every
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        sent = 0
        while not self.stop.is_set():
            sent += 1
            method = "POST" if self.post_every and sent % self.post_every == 0 else "GET"
            started = time.monotonic()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                if method == "POST":
                    conn.request("POST", "/echo", body=b"x" * 100)
                else:
                    conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
                outcome = Outcome(
                    started, ok, body.decode() if ok else f"{resp.status} {body!r}", method
                )
            except Exception as exc:  # a failed request is what the tests count
                outcome = Outcome(started, False, repr(exc), method)
                conn.close()
                conn = None
            if not self.keep_alive and conn is not None:
                conn.close()
                conn = None
            with self._lock:
                self.outcomes.append(outcome)
        if conn is not None:
            conn.close()

    def failures(self, method: str | None = None) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok and (method is None or o.method == method)]


class WebSocket:
    """A minimal RFC 6455 client over a plain socket (text and binary frames, masked as a
    client must): enough to check a proxy passes an upgraded connection through."""

    def __init__(self, port: int, path: str = "/ws", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.file = self.sock.makefile("rb")
        status = self.file.readline().decode()
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        self.status = int(status.split()[1])
        self.headers = headers
        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        self.expected_accept = base64.b64encode(
            hashlib.sha1((key + guid).encode()).digest()
        ).decode()

    def send(self, data: bytes, opcode: int = 0x2) -> None:
        mask = os.urandom(4)
        if len(data) < 126:
            size = bytes([0x80 | len(data)])
        elif len(data) < 65536:
            size = bytes([0x80 | 126]) + struct.pack("!H", len(data))
        else:
            size = bytes([0x80 | 127]) + struct.pack("!Q", len(data))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes([0x80 | opcode]) + size + mask + masked)

    def receive(self) -> tuple[int, bytes]:
        first = self.file.read(2)
        if len(first) < 2:
            raise ConnectionError("the websocket closed")
        length = first[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self.file.read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self.file.read(8))
        return first[0] & 0x0F, self.file.read(length)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

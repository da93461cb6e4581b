"""The small HTTP server every example app runs (stdlib only).

Each app (``web``, ``api``, ``worker``) only declares its extra routes; this module owns
what they share: reading the env switches, ``GET /healthz``, the version page at ``GET /``
(``POST`` answers like ``GET`` after reading the body: load tests send writes too),
the deliberate misbehaviour used by rollout tests, one log line per request, and a
graceful stop on SIGTERM (in-flight requests finish, then the process exits 0).

Env switches (read once at start):

``PORT``        port to listen on (default 8080); the process driver assigns it
``HOST``        address to bind (default 0.0.0.0)
``VERSION``     shown on the version page (default ``dev``)
``FAIL_MODE``   ``unhealthy``: /healthz answers 503; ``errors``: every other path answers 500
``SLOW_MS``     extra latency in milliseconds on every path except /healthz, so a slow
                version stays "ready" and only a latency analysis can catch it
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

FAIL_MODES = ("", "unhealthy", "errors")


class SettingsError(ValueError):
    """An env switch has a value the app cannot use."""


@dataclass(frozen=True)
class Settings:
    """What an app was told by its environment."""

    app: str
    version: str = "dev"
    host: str = "0.0.0.0"
    port: int = 8080
    fail_mode: str = ""
    slow_ms: int = 0

    @classmethod
    def from_env(cls, app: str, env: Mapping[str, str] | None = None) -> Settings:
        """Read the env switches; raise :class:`SettingsError` on a bad value."""
        env = os.environ if env is None else env
        fail_mode = env.get("FAIL_MODE", "").strip().lower()
        if fail_mode not in FAIL_MODES:
            raise SettingsError(
                f"FAIL_MODE={fail_mode!r} is not one of: unhealthy, errors (or empty)"
            )
        return cls(
            app=app,
            version=env.get("VERSION", "dev") or "dev",
            host=env.get("HOST", "0.0.0.0") or "0.0.0.0",
            port=_int_env(env, "PORT", 8080, low=0, high=65535),
            fail_mode=fail_mode,
            slow_ms=_int_env(env, "SLOW_MS", 0, low=0, high=600_000),
        )


def _int_env(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Reply:
    """One HTTP answer produced by a route."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


#: A route answers a GET on one exact path.
Route = Callable[[], Reply]


@dataclass
class AppSpec:
    """What one app adds to the shared server.

    ``routes``: extra exact paths (``/`` and ``/healthz`` are built in).
    ``healthy``: an extra health check (the worker reports a stalled loop here).
    ``status_line``: extra text appended to the version page.
    ``on_stop``: called once after the server stopped accepting requests.
    """

    settings: Settings
    routes: Mapping[str, Route] = field(default_factory=dict)
    healthy: Callable[[], bool] = lambda: True
    status_line: Callable[[], str] = lambda: ""
    on_stop: Callable[[], None] = lambda: None

    def version_page(self) -> str:
        """The text of ``GET /``: one line, easy to grep in tests and demos."""
        s = self.settings
        instance = f"{socket.gethostname()}:{s.port}"
        extra = self.status_line()
        return (
            f"app={s.app} version={s.version} instance={instance}{' ' + extra if extra else ''}\n"
        )

    def answer(self, path: str) -> Reply:
        """Route one GET; the misbehaviour switches apply here, before the app's routes."""
        s = self.settings
        if path == "/healthz":
            if s.fail_mode == "unhealthy" or not self.healthy():
                return Reply(503, "unhealthy\n")
            return Reply(200, "ok\n")
        if s.slow_ms:
            time.sleep(s.slow_ms / 1000)
        if s.fail_mode == "errors":
            return Reply(500, f"{s.app} {s.version}: failing on purpose (FAIL_MODE=errors)\n")
        if path == "/":
            return Reply(200, self.version_page())
        route = self.routes.get(path)
        if route is None:
            return Reply(404, f"not found: {path}\n")
        return route()


def log(app: str, message: str) -> None:
    """One line on stdout, flushed at once so a supervisor sees it live."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stdout.write(f"{stamp} {app} {message}\n")
    sys.stdout.flush()


def _handler_for(spec: AppSpec) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"gitorch-example-{spec.settings.app}"
        # A silent client must not hold up a graceful stop for long.
        timeout = 10

        def do_GET(self) -> None:
            started = time.monotonic()
            path = self.path.split("?", 1)[0]
            try:
                reply = spec.answer(path)
            except Exception as exc:  # an app bug must still produce an answer and a log line
                reply = Reply(500, f"internal error: {exc}\n")
            body = reply.body.encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-App-Version", spec.settings.version)
            self.end_headers()
            self.wfile.write(body)
            took_ms = (time.monotonic() - started) * 1000
            log(
                spec.settings.app,
                f'{self.client_address[0]} "GET {self.path}" {reply.status} {took_ms:.1f}ms',
            )

        def do_POST(self) -> None:
            # A write, as far as a proxy can tell (not idempotent: never sent twice); the
            # body is read and the path answered like a GET.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            self.do_GET()

        def log_message(self, format: str, *args: object) -> None:
            # The stdlib logs to stderr; do_GET already wrote the one line we want.
            pass

    return Handler


#: Connections the kernel queues for the app before it accepts them. The stdlib default
#: is 5: under 20 or more concurrent clients the queue overflows, the kernel drops SYNs,
#: and the clients retry after a second (a ~1 s p99 that no request deserved).
LISTEN_BACKLOG = 512
#: How long a stopping app waits for the requests in flight before it exits anyway.
DRAIN_SECONDS = 10.0


class _Server(ThreadingHTTPServer):
    """One thread per connection; a graceful stop waits for the requests in flight.

    The threads are daemon threads that the server does not keep (the stdlib's
    ``block_on_close`` keeps every thread it ever started in a list until the server
    closes); a count of connections in flight replaces it for the graceful stop.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._in_flight = 0
        self._idle = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted before the thread starts, so a stop never misses a connection just taken.
        with self._idle:
            self._in_flight += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is being served; False if some still are."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


def serve(spec: AppSpec) -> int:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests; return the exit code."""
    try:
        server = _Server((spec.settings.host, spec.settings.port), _handler_for(spec))
    except OSError as exc:
        spec.on_stop()  # the app may already run threads (the worker loop)
        log(spec.settings.app, f"cannot listen on {spec.settings.host}:{spec.settings.port}: {exc}")
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log(spec.settings.app, f"received {signal.Signals(signum).name}, stopping")
        # shutdown() waits for serve_forever() to return, which runs in this very
        # (main) thread: it must be called from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s = spec.settings
    log(
        s.app,
        f"version {s.version} listening on {s.host}:{server.server_address[1]}"
        f" fail_mode={s.fail_mode or 'none'} slow_ms={s.slow_ms}",
    )
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()  # no new connection from here on
        if not server.wait_idle(DRAIN_SECONDS):
            log(s.app, f"requests still in flight after {DRAIN_SECONDS:g}s, stopping anyway")
        spec.on_stop()
    log(s.app, "stopped")
    return 0


def main(app: str, build: Callable[[Settings], AppSpec]) -> None:
    """Entry point shared by the apps: read settings, build the app, serve, exit."""
    try:
        spec = build(Settings.from_env(app))
    except SettingsError as exc:
        sys.stderr.write(f"{app}: {exc}\n")
        raise SystemExit(2) from None
    raise SystemExit(serve(spec))

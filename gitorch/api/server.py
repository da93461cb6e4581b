"""The daemon's HTTP server (standard library only): routes to a :class:`DaemonHandle`.

``ApiServer(handle, "127.0.0.1:7420").start()`` serves in a background (daemon) thread;
``stop()`` returns once the listening socket is closed. Each connection carries one
request (HTTP/1.0 style), so stopping never waits for idle keep-alive clients, and a
request in flight finishes on its own thread.

Guarantees of every response: a JSON body ``{"error": "..."}`` on errors (``/metrics``
aside), 404 for an unknown path, 405 (with ``Allow``) for a wrong method, 413 for a body
over :data:`MAX_BODY` (refused from its Content-Length, before reading it), and never a
traceback: an unexpected exception is logged and answered with a plain 500.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson

from gitorch.api import DaemonHandle, LogStream
from gitorch.api.auth import Denial, TokenSet, authorize, check_exposure
from gitorch.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gitorch.api.tls import handshake
from gitorch.api.webhook import WebhookSecret, handle_delivery
from gitorch.errors import (
    ConfigError,
    GitorchError,
    ManifestError,
    NothingToShow,
    NotNow,
    PathNotFound,
    PlanError,
    RefNotFound,
    SourceError,
)
from gitorch.state.audit_chain import chain_entry_json

log = logging.getLogger("gitorch.api")

#: Largest request body accepted (webhook payloads of big pushes stay well below).
MAX_BODY = 1024 * 1024

#: Bodies up to this size are read and dropped after a 413, so that an ordinary client
#: still gets to read the answer (closing a socket with unread data resets it).
_DRAIN_LIMIT = 8 * MAX_BODY

#: Seconds a client may take to send its request (slow clients hold a thread).
REQUEST_TIMEOUT = 10.0

#: Lines per replica of ``GET /api/v1/services/NAME/logs`` without ``tail``.
DEFAULT_LOG_TAIL = 100

#: Clients following logs at once (each holds a thread and a reader per replica).
MAX_LOG_FOLLOWERS = 16

#: Seconds a followed log stays silent before an empty line keeps it alive (and shows
#: whether its client is still there).
LOG_KEEPALIVE_SECONDS = 10.0

NDJSON_TYPE = "application/x-ndjson"

#: Default ``limit`` of ``GET /api/v1/audit`` (``gitorch audit``'s).
DEFAULT_AUDIT_LIMIT = 100

#: Default and largest ``limit`` of ``GET /api/v1/history``.
DEFAULT_HISTORY_LIMIT = 20
MAX_HISTORY_LIMIT = 1000

JSON_TYPE = "application/json"
MARKDOWN_TYPE = "text/markdown; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

#: ``GET /api/v1/plan?format=``: as ``gitorch plan --format``.
PLAN_FORMATS = ("json", "markdown", "text")
#: ``true`` when applying the plan would change something (``gitorch plan``'s exit 2).
PLAN_CHANGES_HEADER = "Gitorch-Plan-Changes"
#: The plan's digest (what ``gitorch apply --expect-plan`` checks).
PLAN_DIGEST_HEADER = "Gitorch-Plan-Digest"


@dataclass(frozen=True)
class Response:
    """One answer. ``stream`` (server-sent events): chunks written as they come, after
    ``body``, until the iterator ends or the client goes away; no Content-Length."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    stream: Iterator[bytes] | None = None


def json_response(status: int, value: Any, *headers: tuple[str, str]) -> Response:
    body = json.dumps(value, ensure_ascii=False).encode("utf-8") + b"\n"
    return Response(status, body, JSON_TYPE, headers)


def document_response(value: Any, *headers: tuple[str, str], indent: bool = False) -> Response:
    """A large JSON document (the status of 4,000 replicas), encoded by orjson: the
    standard encoder took ~20 ms of the request's CPU. Compact (``{"a":1}``), or indented
    by two spaces (``indent``: the text ``gitorch status --format json`` prints, written
    as it comes); what orjson refuses (an integer beyond 64 bits) goes through the
    standard encoder."""
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    try:
        body = orjson.dumps(value, option=option | (orjson.OPT_INDENT_2 if indent else 0))
    except orjson.JSONEncodeError:
        text = json.dumps(value, indent=2 if indent else None, ensure_ascii=False)
        body = text.encode("utf-8") + b"\n"
    return Response(200, body, JSON_TYPE, headers)


def error_response(status: int, message: str, detail: tuple[str, ...] = ()) -> Response:
    payload: dict[str, Any] = {"error": message}
    if detail:
        payload["detail"] = list(detail)
    return json_response(status, payload)


class HttpError(Exception):
    """Raised inside a route to answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(exc: GitorchError) -> int:
    """HTTP status of a gitorch error raised by the handle.

    What the caller asked for is wrong (unknown ref or path, bad setting): 400. What the
    desired state is (invalid manifests, no possible plan, source problem): 422. Anything
    else (state store, engine) means the daemon cannot answer now: 503. What was asked
    about does not exist (a service, a replica, kept output): 404.
    """
    if isinstance(exc, RefNotFound | PathNotFound | ConfigError):
        return 400
    if isinstance(exc, NothingToShow):
        return 404
    if isinstance(exc, NotNow):
        return 409
    if isinstance(exc, ManifestError | PlanError | SourceError):
        return 422
    return 503


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    principal: str | None = None  # the API token's name, once authorized (gitorch.api.auth)


Route = Callable[[Request], Response]


class MountedApp(Protocol):
    """Pages served beside the API on the same address (the dashboard): the API server
    hands them every path they claim, and they authorize requests themselves."""

    def methods(self, path: str) -> tuple[str, ...] | None:
        """The methods of ``path``, or None when the app does not serve it."""
        ...

    def serve(self, request: Request) -> Response:
        """Answer one request for a path the app claims."""
        ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces) as (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"invalid listen address {listen!r}: expected HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"invalid listen address {listen!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"invalid listen address {listen!r}: write IPv6 hosts as [ADDR]:PORT")
    return host or "0.0.0.0", port  # noqa: S104 (":PORT" asks for every interface)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # stop() must be prompt: never join request threads on close.
    block_on_close = False
    allow_reuse_address = True
    # socketserver's default backlog of 5 resets bursts of parallel clients.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: ApiServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.api.tls
        if context is None:
            super().finish_request(request, client_address)
            return
        # The TLS handshake runs here, on the connection's own thread: a silent client
        # holds this thread (for REQUEST_TIMEOUT at most), never the accept loop.
        try:
            wrapped = handshake(context, request, REQUEST_TIMEOUT)
        except OSError as exc:  # ssl.SSLError included: plain HTTP, a bad client hello
            log.debug("TLS handshake failed from %s: %s", client_address[0], exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            self.shutdown_request(wrapped)


class ApiServer:
    """The HTTP API of a running daemon.

    ``webhook_secret=None`` disables ``POST /api/v1/webhook`` (403 with a message).
    ``tokens`` turns on bearer authentication (gitorch.api.auth) and ``tls`` (a server
    context from :mod:`gitorch.api.tls`) HTTPS; without both, a non-loopback ``listen`` is
    refused (ConfigError) unless ``insecure`` is True. ``app`` (the dashboard) serves the
    paths it claims that no API route has.
    """

    def __init__(
        self,
        handle: DaemonHandle,
        listen: str = "127.0.0.1:7420",
        *,
        webhook_secret: WebhookSecret | None = None,
        tokens: TokenSet | None = None,
        insecure: bool = False,
        tls: ssl.SSLContext | None = None,
        app: MountedApp | None = None,
    ) -> None:
        self.handle = handle
        self.app = app
        self.listen = listen
        self.webhook_secret = webhook_secret
        self.tokens = tokens
        self.tls = tls
        self._bind = parse_listen(listen)
        check_exposure(self._bind[0], tokens, insecure, tls=tls is not None)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._followers_lock = threading.Lock()
        self._followers: set[LogStream] = set()
        self._routes: dict[str, dict[str, Route]] = {
            "/healthz": {"GET": self._healthz},
            "/api/v1/status": {"GET": self._status},
            "/api/v1/history": {"GET": self._history},
            "/api/v1/plan": {"GET": self._plan},
            "/api/v1/nodes": {"GET": self._nodes},
            "/api/v1/audit": {"GET": self._audit},
            "/api/v1/audit/chain": {"GET": self._audit_chain},
            "/metrics": {"GET": self._metrics},
            "/api/v1/webhook": {"POST": self._webhook},
            "/api/v1/reconcile": {"POST": self._reconcile},
            _SERVICE_ACTION: {"POST": self._service_action},
            _SERVICE_LOGS: {"GET": self._service_logs},
            _NODE_ACTION: {"POST": self._node_action},
            _VOLUME_RESET: {"POST": self._volume_reset},
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a background thread; raises ConfigError if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("the API server is already started")
        try:
            server = _Server(self._bind, self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.listen}: {exc.strerror or exc}",
                detail=("choose another address with --listen",),
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon stop() returns
            name="gitorch-api",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        log.info(
            "API listening on %s:%d%s",
            host,
            port,
            " (TLS)" if self.tls is not None else "",
            extra={"listen": f"{host}:{port}", "tls": self.tls is not None},
        )

    def stop(self) -> None:
        """Stop accepting requests and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        with self._followers_lock:
            following = list(self._followers)
        for stream in following:
            stream.close()  # their responses end; a stopped API holds no reader
        server.shutdown()  # returns within one poll_interval (50 ms)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when started with port 0."""
        if self._server is None:
            raise RuntimeError("the API server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    # -- dispatch ----------------------------------------------------------------------

    def allowed(self, path: str) -> tuple[str, ...] | None:
        """Methods of ``path``, or None when no such route exists."""
        methods = self._routes.get(_route_of(path))
        if methods is None:
            return self.app.methods(path) if self.app is not None else None
        return tuple(sorted(methods))

    def dispatch(self, request: Request) -> Response:
        route_name = _route_of(request.path)
        if route_name not in self._routes and self.app is not None:
            return self.app.serve(request)
        decision = authorize(
            self.tokens, request.method, route_name, request.headers, path=request.path
        )
        if isinstance(decision, Denial):
            return _denied(request, decision)
        request = replace(request, principal=decision.principal)
        route = self._routes[route_name][request.method]
        try:
            return route(request)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except GitorchError as exc:
            return error_response(status_for(exc), exc.message, exc.detail)

    # -- routes ------------------------------------------------------------------------

    def _healthz(self, request: Request) -> Response:
        ok, reason = self.handle.healthy()
        if ok:
            return json_response(200, {"ok": True})
        return json_response(503, {"ok": False, "reason": reason or "unhealthy"})

    def _status(self, request: Request) -> Response:
        """The status document; ``?indent=2``: indented as ``gitorch status --format
        json`` prints it (a local status writes it as it comes, parsing nothing). The
        ``Gitorch-Pid`` header names the answering process: a local status checks it is
        the daemon its state directory names."""
        indent = _one(request, "indent") == "2"
        pid = ("Gitorch-Pid", str(os.getpid()))
        return document_response(self.handle.status(), pid, indent=indent)

    def _history(self, request: Request) -> Response:
        service = _one(request, "service") or None
        limit_text = _one(request, "limit")
        limit = DEFAULT_HISTORY_LIMIT
        if limit_text is not None:
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_HISTORY_LIMIT:
                raise HttpError(400, f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
            limit = int(limit_text)
        if _one(request, "scaling") in ("1", "true"):
            return json_response(200, self.handle.scaling(service, limit))
        return json_response(200, self.handle.history(service, limit))

    def _plan(self, request: Request) -> Response:
        """The plan of ``ref`` as ``gitorch plan --format FORMAT`` prints it (text without
        colour); whether it changes anything and its digest in headers, whatever the format
        (``gitorch plan --server`` exits 2 or 0 on the first)."""
        ref = _one(request, "ref") or None
        form = _one(request, "format") or "json"
        if form not in PLAN_FORMATS:
            raise HttpError(400, f"format must be one of {', '.join(PLAN_FORMATS)}, not {form!r}")
        plan = self.handle.plan(ref)
        changes = (PLAN_CHANGES_HEADER, "true" if plan.has_changes else "false")
        if form == "json":
            document = plan.to_json()  # the digest comes with the body, made once
            return json_response(200, document, changes, (PLAN_DIGEST_HEADER, document["digest"]))
        headers = (changes, (PLAN_DIGEST_HEADER, plan.digest))
        if form == "markdown":
            from gitorch.diff.render.markdown import render_markdown

            return Response(200, render_markdown(plan).encode(), MARKDOWN_TYPE, headers)
        from gitorch.diff.render.text import render_plain

        return Response(200, render_plain(plan).encode(), TEXT_TYPE, headers)

    def _nodes(self, request: Request) -> Response:
        return json_response(200, {"nodes": self.handle.nodes()})

    def _audit(self, request: Request) -> Response:
        """The newest ``limit`` entries (0: all), newest first, as ``gitorch audit
        --format json`` writes each; ``since`` in seconds of the Unix epoch."""
        limit_text = _one(request, "limit") or str(DEFAULT_AUDIT_LIMIT)
        if not limit_text.isdigit():
            raise HttpError(400, "limit must be an integer, 0 for all")
        since_text = _one(request, "since")
        try:
            since = float(since_text) if since_text is not None else None
        except ValueError:
            raise HttpError(400, "since must be seconds of the Unix epoch") from None
        if since is not None and not math.isfinite(since):
            raise HttpError(400, "since must be seconds of the Unix epoch")
        events = self.handle.audit_events(
            _one(request, "service") or None,
            _one(request, "kind") or None,
            since,
            int(limit_text) or None,
        )
        return json_response(200, events)

    def _audit_chain(self, request: Request) -> Response:
        """Every entry as the hash chain reads it, for ``gitorch audit --verify
        --server`` to check on its side."""
        entries, highest = self.handle.audit_chain()
        return json_response(
            200, {"entries": [chain_entry_json(e) for e in entries], "highestId": highest}
        )

    def _metrics(self, request: Request) -> Response:
        body = self.handle.metrics.render().encode("utf-8")
        return Response(200, body, METRICS_CONTENT_TYPE)

    def _webhook(self, request: Request) -> Response:
        outcome = handle_delivery(self.webhook_secret, request.headers, request.body)
        self.handle.metrics.webhook_requests_total.inc(result=outcome.result)
        fields = {"webhook": outcome.result, **outcome.log_fields}
        if outcome.push is not None:
            self.handle.trigger(outcome.push.trigger_reason)
            log.info("webhook push accepted: reconcile requested", extra=fields)
        elif outcome.result == "ping":
            # A forge sends one when a webhook is set up: its answer is how an operator
            # knows the secret and the URL are right.
            log.info("webhook ping answered", extra=fields)
        elif outcome.status >= 400:
            log.warning("webhook refused: %s", outcome.body.get("error"), extra=fields)
        return json_response(outcome.status, outcome.body)

    def _service_action(self, request: Request) -> Response:
        """POST /api/v1/services/NAME/promote|abort: 202 when requested, 409 when the
        service has no rollout to act on."""
        match = _SERVICE_ACTION_RE.match(request.path)
        assert match is not None  # dispatch only routes matching paths here
        service, action = match.group(1), match.group(3)
        accepted, message = self.handle.request_action(service, action, actor=request.principal)
        if not accepted:
            raise HttpError(409, message)
        self.handle.trigger(f"{action} {service}")
        return json_response(202, {"accepted": True, "message": message})

    def _node_action(self, request: Request) -> Response:
        """POST /api/v1/nodes/NAME/drain|uncordon: 202 once written (the token's name in
        the audit log) and a pass asked for; 404 for a node the store does not know."""
        match = _NODE_ACTION_RE.match(request.path)
        assert match is not None  # dispatch only routes matching paths here
        node, action = match.group(1), match.group(3)
        done, message = self.handle.drain(node, action == "drain", request.principal)
        if not done:
            raise HttpError(404, message)
        self.handle.trigger(f"{action} {node}")
        return json_response(202, {"accepted": True, "message": message})

    def _volume_reset(self, request: Request) -> Response:
        """POST /api/v1/volumes/NAME/reset: 202 once written (the token's name in the
        audit log) and a pass asked for; 404 for no such volume, 409 for one that is not
        missing."""
        match = _VOLUME_RESET_RE.match(request.path)
        assert match is not None  # dispatch only routes matching paths here
        name = match.group(1)
        message = self.handle.reset_volume(name, request.principal)
        self.handle.trigger(f"reset volume {name}")
        return json_response(202, {"accepted": True, "message": message})

    def _service_logs(self, request: Request) -> Response:
        """GET /api/v1/services/NAME/logs[?tail=N&replica=R&previous=1|follow=1]: the
        live replicas' last lines (``{"replicas", "warnings"}``), or with ``previous`` what
        is kept of the dead ones (``{"previous"}``), or with ``follow`` the last lines and
        then the new ones as newline-delimited JSON events until the client leaves; 404
        when there is nothing to show."""
        match = _SERVICE_LOGS_RE.match(request.path)
        assert match is not None  # dispatch only routes matching paths here
        tail_text = _one(request, "tail") or str(DEFAULT_LOG_TAIL)
        if not tail_text.isdigit():
            raise HttpError(400, "tail must be a number of lines")
        previous = _one(request, "previous") in ("1", "true")
        service, replica = match.group(1), _one(request, "replica") or None
        if _one(request, "follow") in ("1", "true"):
            if previous:
                raise HttpError(400, "follow and previous do not go together")
            return self._follow_logs(service, replica, int(tail_text))
        return json_response(
            200, self.handle.service_logs(service, replica, int(tail_text), previous)
        )

    def _follow_logs(self, service: str, replica: str | None, tail: int) -> Response:
        with self._followers_lock:
            if len(self._followers) >= MAX_LOG_FOLLOWERS:
                raise HttpError(
                    503, f"{MAX_LOG_FOLLOWERS} clients follow logs already: try again later"
                )
            stream = self.handle.follow_logs(service, replica, tail)  # NothingToShow: 404
            self._followers.add(stream)
        return Response(
            200, b"", NDJSON_TYPE, (("X-Accel-Buffering", "no"),), stream=self._events(stream)
        )

    def _events(self, stream: LogStream) -> Iterator[bytes]:
        """The followed events, one JSON line each; an empty line when quiet. Ends when
        the client leaves (a write fails: the response's ``close``) or the API stops."""
        try:
            for event in stream.events(LOG_KEEPALIVE_SECONDS):
                yield (
                    b"\n"
                    if event is None
                    else orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
                )
        finally:
            stream.close()
            with self._followers_lock:
                self._followers.discard(stream)

    def _reconcile(self, request: Request) -> Response:
        reason = "api request"
        if request.body.strip():
            try:
                data = json.loads(request.body)
            except ValueError as exc:
                raise HttpError(400, f"the body is not JSON: {exc}") from exc
            given = data.get("reason") if isinstance(data, dict) else None
            if given is not None:
                if not isinstance(given, str) or not given.isprintable() or len(given) > 200:
                    raise HttpError(
                        400, "reason must be a printable string of 200 characters at most"
                    )
                reason = f"api request: {given}"
        self.handle.trigger(reason, actor=request.principal)
        return json_response(202, {"accepted": True, "reason": reason})


_NODE_ACTION = "/api/v1/nodes/{name}/{action}"
_NODE_ACTION_RE = re.compile(
    r"^/api/v1/nodes/([A-Za-z0-9]([-._A-Za-z0-9]{0,251}[A-Za-z0-9])?)/(drain|uncordon)$"
)
_VOLUME_RESET = "/api/v1/volumes/{name}/reset"
_VOLUME_RESET_RE = re.compile(r"^/api/v1/volumes/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/reset$")
_SERVICE_LOGS = "/api/v1/services/{name}/logs"
_SERVICE_LOGS_RE = re.compile(r"^/api/v1/services/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/logs$")
_SERVICE_ACTION = "/api/v1/services/{name}/{action}"
_SERVICE_ACTION_RE = re.compile(
    r"^/api/v1/services/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/(promote|abort)$"
)

_NAMED_ROUTES = (
    (_SERVICE_ACTION, _SERVICE_ACTION_RE),
    (_SERVICE_LOGS, _SERVICE_LOGS_RE),
    (_NODE_ACTION, _NODE_ACTION_RE),
    (_VOLUME_RESET, _VOLUME_RESET_RE),
)


def _denied(request: Request, denial: Denial) -> Response:
    # Names the route, never the presented token.
    log.warning(
        "API request refused (%d): %s",
        denial.status,
        denial.message,
        extra={"method": request.method, "path": request.path, "status": denial.status},
    )
    return json_response(
        denial.status, {"error": denial.message}, ("WWW-Authenticate", denial.challenge)
    )


def _route_of(path: str) -> str:
    """The route a path belongs to (service and node routes carry the name in the path)."""
    for route, pattern in _NAMED_ROUTES:
        if pattern.match(path):
            return route
    return path


def _one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, f"query parameter {name!r} given more than once")
    return values[0]


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, hands it to the ApiServer, writes the response, logs one line."""

    server: _Server
    server_version = "gitorch"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_PUT(self) -> None:  # noqa: N802
        self._serve()

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve()

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        started = time.monotonic()
        try:
            response = self._respond()
        except Exception:
            # The traceback goes to the log; the client only learns that it failed.
            log.exception("API request failed: %s %s", self.command, self.path)
            response = error_response(500, "internal error (see the daemon log)")
        self._write(response)
        log.debug(
            "%s %s %d",
            self.command,
            urlsplit(self.path).path,
            response.status,
            extra={
                "method": self.command,
                "path": urlsplit(self.path).path,
                "status": response.status,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
                "remote": self.client_address[0],
                "bytes": len(response.body),
            },
        )

    def _respond(self) -> Response:
        api = self.server.api
        split = urlsplit(self.path)
        methods = api.allowed(split.path)
        if methods is None:
            return error_response(404, f"no such endpoint: {split.path}")
        if self.command not in methods:
            return Response(
                405,
                json_response(405, {"error": f"method {self.command} not allowed"}).body,
                JSON_TYPE,
                (("Allow", ", ".join(methods)),),
            )
        body = self._read_body()
        if isinstance(body, Response):
            return body
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        return api.dispatch(request)

    def _read_body(self) -> bytes | Response:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return error_response(411, "chunked bodies are not accepted: send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not length_text.strip().isdigit():
            self.close_connection = True
            return error_response(400, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY:
            self._drain(length)
            return error_response(413, f"request body over {MAX_BODY} bytes")
        try:
            body = self.rfile.read(length)
        except OSError:  # includes the socket timeout
            self.close_connection = True
            return error_response(400, "the request body could not be read")
        if len(body) != length:
            self.close_connection = True
            return error_response(400, "the request body is shorter than its Content-Length")
        return body

    def _drain(self, length: int) -> None:
        """Read and drop an oversized body (up to a bound) so the client reads our 413."""
        self.close_connection = True
        if length > _DRAIN_LIMIT:
            return
        remaining = length
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    return
                remaining -= len(chunk)
        except OSError:
            return

    def _write(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            if response.stream is None:
                self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.write(response.body)
            if response.stream is not None:
                self.close_connection = True
                for chunk in response.stream:
                    self.wfile.write(chunk)
                    self.wfile.flush()
        except OSError:
            # The client went away; nothing to answer to.
            self.close_connection = True
        finally:
            if response.stream is not None and hasattr(response.stream, "close"):
                response.stream.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # http.server would print to stderr; requests are logged once in _serve instead.
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines end here (before routing): answer in JSON too.
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        body = json.dumps({"error": message or phrase}).encode() + b"\n"
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", JSON_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            return

"""The dashboard's routes, mounted on the daemon's API server (``ApiServer(app=...)``).

Pages (GET, read role)::

    /                     the cluster: services, nodes, volumes, the applied revision
    /services/NAME        one service: rollout steps and weight, traffic, analysis
                          charts, instances per node, recent events
    /history              revisions with author, signer, result and field diffs;
                          the scaling decisions (autoscaler, vertical Auto, node pools)
    /plan[?ref=REF]       the plan of the branch head or of a ref
    /audit                the audit log (who did what)
    /events               server-sent events: "change" whenever what the pages show changes

Forms (POST, CSRF token; actions need the write role)::

    /login /logout        sign in with an API token (an HttpOnly cookie) / out
    /actions              action=promote|abort (service), drain|undrain (node), reconcile

Static files come from ``static/`` in the package (no CDN, nothing leaves the host).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from gitorch.api import DaemonHandle
from gitorch.api.auth import TokenSet
from gitorch.api.server import Request, Response
from gitorch.dashboard import views
from gitorch.dashboard.security import Guard, Viewer, cookie_header
from gitorch.errors import GitorchError

log = logging.getLogger("gitorch.dashboard")

HTML = "text/html; charset=utf-8"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_SERVICE_PAGE = re.compile(r"^/services/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
_STATIC = re.compile(r"^/static/([a-z0-9_-]+\.(css|js))$")
_SECURITY_HEADERS = (
    # Scripts and styles only from this host; no framing (clickjacking of the buttons).
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)

#: How often the event stream looks for a change, and how long one stream lives (the
#: browser's EventSource reconnects on its own).
POLL_SECONDS = 1.0
STREAM_SECONDS = 300.0


class DashboardHandle(DaemonHandle, Protocol):
    """What the dashboard asks of the daemon beyond the API's handle."""

    def audit(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Audit entries, newest first (``AuditEvent.to_json`` shape)."""
        ...

    def drain(self, node: str, draining: bool, actor: str | None) -> tuple[bool, str]:
        """Cordon and drain ``node`` (or undo it): (done, message), recorded with ``actor``."""
        ...

    def dead_replicas(self, service: str, lines: int) -> list[dict[str, Any]]:
        """What the drivers kept of ``service``'s removed replicas, newest first: how each
        ended and its last ``lines`` of output (``gitorch logs --previous --format json``)."""
        ...


class Dashboard:
    """Serves the pages and actions; authorizes each request with the API's tokens."""

    def __init__(
        self,
        handle: DashboardHandle,
        tokens: TokenSet | None,
        *,
        secure_cookie: bool = False,
        repo: str | None = None,
    ) -> None:
        self.handle = handle
        self.link_base = views.commit_link_base(repo)
        self.guard = Guard(tokens)
        self.secure_cookie = secure_cookie
        self._stopping = threading.Event()
        # One look at the cluster per POLL_SECONDS, however many browsers watch.
        self._mark_lock = threading.Lock()
        self._mark: tuple[float, str] = (0.0, "")
        self._pages: dict[str, Callable[[Request, Viewer], Response]] = {
            "/": self._cluster,
            "/history": self._history,
            "/plan": self._plan,
            "/audit": self._audit,
            "/login": self._login_page,
            "/events": self._events,
        }
        self._forms: dict[str, Callable[[Request, Viewer], Response]] = {
            "/login": self._login,
            "/logout": self._logout,
            "/actions": self._action,
        }

    def close(self) -> None:
        """End every event stream (the daemon stops)."""
        self._stopping.set()

    # -- MountedApp ------------------------------------------------------------------------

    def methods(self, path: str) -> tuple[str, ...] | None:
        if _STATIC.match(path) or _SERVICE_PAGE.match(path):
            return ("GET", "HEAD")
        found = tuple(
            m for m, table in (("GET", self._pages), ("POST", self._forms)) if path in table
        )
        if not found:
            return None
        return (*found, "HEAD") if "GET" in found else found

    def serve(self, request: Request) -> Response:
        static = _STATIC.match(request.path)
        if static:
            return _static(static.group(1))
        viewer = self.guard.viewer(request.headers)
        try:
            if request.method in ("GET", "HEAD"):
                if request.path not in ("/login",) and not viewer.can_read:
                    return _redirect(f"/login?next={quote(request.path)}")
                service = _SERVICE_PAGE.match(request.path)
                if service:
                    return self._service(request, viewer, service.group(1))
                return self._pages[request.path](request, viewer)
            return self._forms[request.path](request, viewer)
        except GitorchError as exc:
            return self._html(request, viewer, "Error", _error_body(exc), status=503)

    # -- pages -----------------------------------------------------------------------------

    def _context(self, viewer: Viewer, flash: str = "") -> views.PageContext:
        return views.PageContext(
            viewer_name=viewer.name,
            can_write=viewer.can_write,
            signed_in=viewer.can_read,
            needs_login=not self.guard.open,
            csrf=self.guard.csrf(viewer),
            writers=self.guard.writers(),
            flash=flash,
        )

    def _html(
        self, request: Request, viewer: Viewer, title: str, body: str, *, status: int = 200,
        active: str = "",
    ) -> Response:  # fmt: skip
        if request.headers.get("x-fragment") == "1":
            # app.js swaps <main> with this when the daemon says something changed.
            return Response(status, body.encode(), HTML, _SECURITY_HEADERS)
        document = views.page(title, body, self._context(viewer, _flash(request)), active=active)
        return Response(status, document.encode(), HTML, _SECURITY_HEADERS)

    def _cluster(self, request: Request, viewer: Viewer) -> Response:
        status = self.handle.status()
        body = views.cluster_body(status, self._context(viewer))
        return self._html(request, viewer, "Cluster", body, active="/")

    def _service(self, request: Request, viewer: Viewer, name: str) -> Response:
        status = self.handle.status()
        service = next((s for s in status.get("services") or [] if s.get("name") == name), None)
        if service is None:
            body = (
                f"<h1>No service {views.esc(name)}</h1><p><a href='/'>Back to the cluster</a></p>"
            )
            return self._html(request, viewer, name, body, status=404)
        events = self.handle.audit(name, 20)
        dead = self.handle.dead_replicas(name, 40)
        body = views.service_body(service, events, self._context(viewer), dead)
        return self._html(request, viewer, name, body)

    def _history(self, request: Request, viewer: Viewer) -> Response:
        service = _one(request, "service")
        revisions = self.handle.history(service, 50)
        body = views.history_body(revisions, self._context(viewer), self.link_base)
        body += views.scaling_body(self.handle.scaling(service, 50))
        return self._html(request, viewer, "History", body, active="/history")

    def _plan(self, request: Request, viewer: Viewer) -> Response:
        ref = _one(request, "ref")
        try:
            plan = self.handle.plan(ref).to_json()
        except GitorchError as exc:
            return self._html(request, viewer, "Plan", _error_body(exc), status=422, active="/plan")
        body = views.plan_body(plan, self._context(viewer), ref)
        return self._html(request, viewer, "Plan", body, active="/plan")

    def _audit(self, request: Request, viewer: Viewer) -> Response:
        events = self.handle.audit(_one(request, "service"), 200)
        return self._html(request, viewer, "Audit", views.events_table(events), active="/audit")

    def _login_page(self, request: Request, viewer: Viewer) -> Response:
        if self.guard.open:
            return _redirect("/")
        body = views.login_body("", _local(_one(request, "next")))
        return self._html(request, viewer, "Sign in", body)

    def _events(self, request: Request, viewer: Viewer) -> Response:
        """Server-sent events: ``change`` whenever the cluster, a rollout or history moves."""
        return Response(
            200,
            b"retry: 2000\n\n",
            "text/event-stream",
            (("X-Accel-Buffering", "no"),),
            stream=self._stream(),
        )

    def _stream(self) -> Iterator[bytes]:
        last = ""
        started = quiet_since = time.monotonic()
        while not self._stopping.is_set() and time.monotonic() - started < STREAM_SECONDS:
            try:
                mark = self._fingerprint()
            except GitorchError:
                mark = last
            if mark != last:
                if last:
                    yield f"event: change\ndata: {mark[:16]}\n\n".encode()
                last, quiet_since = mark, time.monotonic()
            elif time.monotonic() - quiet_since > 15:
                yield b": still here\n\n"  # keeps proxies from closing an idle stream
                quiet_since = time.monotonic()
            self._stopping.wait(POLL_SECONDS)

    def _fingerprint(self) -> str:
        with self._mark_lock:
            taken, mark = self._mark
            if time.monotonic() - taken < POLL_SECONDS * 0.9:
                return mark
            status = self.handle.status()
            history = self.handle.history(None, 1)
            mark = hashlib.sha256(
                json.dumps([_stable(status), history], sort_keys=True, default=str).encode()
            ).hexdigest()
            self._mark = (time.monotonic(), mark)
            return mark

    # -- forms -----------------------------------------------------------------------------

    def _login(self, request: Request, viewer: Viewer) -> Response:
        form = _form(request)
        next_path = _local(form.get("next"))
        if self.guard.open:
            return _redirect(next_path)
        token = form.get("token", "")
        signed = self.guard.check_token(token)
        if signed is None or not signed.can_read:
            body = views.login_body("That token is not one of the daemon's.", next_path)
            return self._html(request, viewer, "Sign in", body, status=401)
        log.info("dashboard sign-in", extra={"token": signed.name})
        return _redirect(next_path, ("Set-Cookie", cookie_header(token, secure=self.secure_cookie)))

    def _logout(self, request: Request, viewer: Viewer) -> Response:
        if not self.guard.csrf_ok(viewer, _form(request).get("csrf")):
            return self._forbidden(request, viewer)
        return _redirect("/login", ("Set-Cookie", cookie_header("", secure=self.secure_cookie)))

    def _forbidden(self, request: Request, viewer: Viewer) -> Response:
        log.warning("dashboard form refused: no valid CSRF token", extra={"path": request.path})
        body = "<h1>Refused</h1><p>This form did not come from this dashboard (CSRF check).</p>"
        return self._html(request, viewer, "Refused", body, status=403)

    def _action(self, request: Request, viewer: Viewer) -> Response:
        form = _form(request)
        if not self.guard.csrf_ok(viewer, form.get("csrf")):
            return self._forbidden(request, viewer)
        if not viewer.can_write:
            body = "<h1>Not allowed</h1><p>Actions need a token with the write role.</p>"
            return self._html(request, viewer, "Not allowed", body, status=403)
        action, back = form.get("action", ""), _local(form.get("back"))
        service, node = form.get("service", ""), form.get("node", "")
        if form.get("confirmed") != "1":
            question = f"{action} {service or node}?".strip()
            return self._html(request, viewer, "Confirm", views.confirm_body(question, form))
        actor = viewer.actor
        if action in ("promote", "abort") and service:
            done, message = self.handle.request_action(service, action, actor=actor)
            if done:
                self.handle.trigger(f"{action} {service}")
        elif action in ("drain", "undrain") and node:
            done, message = self.handle.drain(node, action == "drain", actor)
            if done:
                self.handle.trigger(f"{action} {node}")
        elif action == "reconcile":
            self.handle.trigger("dashboard request", actor=actor)
            done, message = True, "reconcile requested"
        else:
            return self._html(request, viewer, "Bad request", "<h1>Unknown action</h1>", status=400)
        log.info("dashboard action %s: %s", action, message, extra={"token": actor})
        separator = "&" if "?" in back else "?"
        return _redirect(f"{back}{separator}flash={quote(message)}", status=303 if done else 303)


# -- helpers -------------------------------------------------------------------------------


def _static(name: str) -> Response:
    try:
        data = resources.files("gitorch.dashboard").joinpath("static", name).read_bytes()
    except (FileNotFoundError, OSError):
        return Response(404, b"not found\n", "text/plain; charset=utf-8")
    suffix = name[name.rindex(".") :]
    return Response(200, data, _STATIC_TYPES[suffix], (("X-Content-Type-Options", "nosniff"),))


def _redirect(location: str, *headers: tuple[str, str], status: int = 303) -> Response:
    return Response(status, b"", HTML, (("Location", location), *headers))


def _form(request: Request) -> dict[str, str]:
    fields = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}


def _one(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values and values[0] else None


def _flash(request: Request) -> str:
    return (_one(request, "flash") or "")[:300]


def _local(path: str | None) -> str:
    """Only a path on this dashboard ("/..." but not "//host"): no open redirect."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _stable(value: Any) -> Any:
    """The status document without what moves on its own (ages, countdowns, timestamps)."""
    if isinstance(value, dict):
        return {
            k: _stable(v)
            for k, v in value.items()
            if k not in ("asOf", "ageSeconds", "retryInSeconds", "since")
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _error_body(exc: GitorchError) -> str:
    detail = "".join(f"<li><code>{views.esc(d)}</code></li>" for d in exc.detail)
    return f'<div class="error" role="alert">{views.esc(exc.message)}<ul>{detail}</ul></div>'

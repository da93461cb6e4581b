"""The daemon's side of ``gitorch proxy``: a :class:`~gitorch.traffic.table.DataPlane`
that drives the proxy over its control socket, starting one when none runs.

The proxy is started as ``python -m gitorch proxy run --detach`` in a session of its own
(it double-forks, so it is nobody's child), and adopted when it already runs: a daemon
that restarts finds it serving the table it last applied. :meth:`ProxyDataPlane.close`
only lets go of it; :meth:`ProxyDataPlane.stop` is ``gitorch proxy stop``.

TLS files in a table are names under the secrets directory (as the manifest gives them):
they are resolved here, refusing names that leave the directory, before the table goes
to the proxy, which reads the files itself.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from gitorch.errors import ConfigError
from gitorch.traffic.builtin.loops import default_event_loop
from gitorch.traffic.figures import BackendFigures, VersionFigures
from gitorch.traffic.proxy.control import (
    ProxyPaths,
    ProxyRefused,
    ProxyUnavailable,
    call,
)
from gitorch.traffic.routes import ListenError, RouteInvalid, check_table, resolve_tls
from gitorch.traffic.table import BackendStats, DataPlaneHealth, RoutingTable
from gitorch.traffic.wire import (
    backend_figures_from_json,
    stats_from_json,
    table_to_json,
    version_figures_from_json,
)

log = logging.getLogger("gitorch.proxy")

#: Seconds a request waits for the proxy (an apply waits for every worker).
CALL_TIMEOUT = 35.0
#: Seconds a started proxy may take to serve.
START_TIMEOUT = 30.0
#: Seconds an apply is retried while the proxy hands over to a successor.
BUSY_RETRY = 10.0


class ControlledPlane(ABC):
    """The :class:`~gitorch.traffic.table.DataPlane` of a proxy driven by control requests:
    every method is one request through :meth:`_call` (a unix socket here, a relay to
    another host in :mod:`.remote`)."""

    kind = "proxy"

    @abstractmethod
    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One control request and its answer."""

    def _prepare(self, table: RoutingTable) -> RoutingTable:
        """The table as this proxy serves it (checked; TLS names made paths)."""
        check_table(table)
        return table

    def apply(self, table: RoutingTable) -> None:
        request = {"op": "apply", "table": table_to_json(self._prepare(table))}
        deadline = time.monotonic() + BUSY_RETRY
        while True:
            answer = self._call(request)
            error = answer.get("error")
            if error is None:
                return
            if error.get("kind") == "busy" and time.monotonic() < deadline:
                time.sleep(0.1)  # a successor is taking over: it will have the path soon
                continue
            raise _translate(error)

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        answer = self._ok({"op": "stats", "service": service, "backend": backend_id})
        return stats_from_json(answer.get("stats"))

    def figures(self, service: str) -> list[BackendFigures]:
        answer = self._ok({"op": "figures", "service": service})
        return [backend_figures_from_json(item) for item in answer.get("backends", [])]

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        answer = self._ok({"op": "versions", "service": service})
        return {str(v): version_figures_from_json(f) for v, f in answer.get("versions", {}).items()}

    def health(self) -> DataPlaneHealth:
        try:
            answer = self._call({"op": "health"})
        except ProxyUnavailable as exc:
            return DataPlaneHealth(self.kind, False, exc.message)
        return DataPlaneHealth(
            self.kind,
            bool(answer.get("ok")),
            str(answer.get("message") or ""),
            pid=answer.get("pid"),
            since=answer.get("since"),
        )

    def serving(self) -> frozenset[str] | None:
        answer = self._call({"op": "serving"})
        if answer.get("error") is not None:
            return None  # a proxy of an earlier gitorch: it cannot say
        return frozenset(str(backend) for backend in answer.get("backends", []))

    def close(self) -> None:  # noqa: B027 (letting go costs nothing by default)
        """Let go: the proxy keeps serving its last table."""

    def stop(self) -> None:
        """Stop the proxy (it drains open connections first)."""
        self._ok({"op": "stop"})

    def _ok(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self._call(request)
        error = answer.get("error")
        if error is not None:
            raise _translate(error)
        return answer


class ProxyDataPlane(ControlledPlane):
    """``gitorch proxy`` as the daemon's data plane (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        workers: int = 1,
        secrets_dir: Path | None = None,
        start: bool = True,
    ) -> None:
        """``start``: start a proxy when none runs (else :class:`ProxyUnavailable`)."""
        self.state_dir = Path(state_dir)
        self.paths = ProxyPaths.of(self.state_dir)
        self.host = host
        self.workers = workers
        self.secrets_dir = secrets_dir
        self.start = start
        self._restart_lock = threading.Lock()
        if start:
            # Starting a daemon asks for its endpoints: an earlier `gitorch proxy stop` no
            # longer holds.
            self.paths.stopped.unlink(missing_ok=True)
        self.hello = self._connect()

    def _prepare(self, table: RoutingTable) -> RoutingTable:
        check_table(table)
        return resolve_tls(table, self.secrets_dir)

    # ----------------------------------------------------------------- internals

    def _connect(self) -> dict[str, Any]:
        """``hello`` of the running proxy, starting one first when allowed."""
        try:
            hello = call(self.paths.socket, {"op": "hello"}, CALL_TIMEOUT)
        except ProxyUnavailable:
            if not self.start:
                raise
        else:
            log.info(
                "adopted proxy %s (gitorch %s), serving", hello.get("pid"), hello.get("version")
            )
            self._say_what_differs(hello)
            return hello
        launch(self.state_dir, host=self.host, workers=self.workers)
        hello = call(self.paths.socket, {"op": "hello"}, CALL_TIMEOUT)
        log.info("started proxy %s", hello.get("pid"))
        return hello

    def _say_what_differs(self, hello: dict[str, Any]) -> None:
        """A daemon that adopts a proxy keeps its listening address and its workers
        (moving them would close every endpoint for a moment): say so when the daemon
        was given others, and how to apply them, rather than seem to have applied them.
        (``gitorch apply`` takes the proxy as it is: its defaults ask for nothing.)"""
        if not self.start:
            return
        asked: dict[str, tuple[object, object]] = {
            "address": (hello.get("host"), self.host),
            "workers": (hello.get("workers"), self.workers),
        }
        for what, (running, wanted) in asked.items():
            if running is not None and running != wanted:
                log.warning(
                    "the running proxy %s keeps its %s (%s, not %s as given): "
                    "`gitorch proxy stop`, then start the daemon again, to change it "
                    "(the endpoints are down in between)",
                    hello.get("pid"),
                    what,
                    running,
                    wanted,
                )

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return call(self.paths.socket, request, CALL_TIMEOUT)
        except ProxyUnavailable as exc:
            if not self.start:
                raise
            if self.paths.stopped.exists():
                raise ProxyUnavailable(
                    "the proxy was stopped with `gitorch proxy stop`: endpoints are down "
                    "until `gitorch proxy run` or a daemon restart"
                ) from exc
        # The proxy died: start one (it serves the last table at once), and retry. Any
        # call does it; the daemon reads figures every few seconds. One caller at a time:
        # the daemon's threads (the pass, the traffic meter, the API) all notice at once,
        # and each starting a proxy would have the second take over from the first.
        with self._restart_lock:
            with contextlib.suppress(ProxyUnavailable):
                return call(self.paths.socket, request, CALL_TIMEOUT)  # started meanwhile
            log.warning("the proxy does not answer: starting a new one")
            self.hello = self._connect()
        return call(self.paths.socket, request, CALL_TIMEOUT)


def launch(
    state_dir: Path,
    *,
    host: str,
    workers: int,
    event_loop: str | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Start a detached ``gitorch proxy`` on ``state_dir`` and wait until it serves."""
    argv = [
        sys.executable,
        "-m",
        "gitorch.traffic.proxy",  # the data plane alone (see traffic/proxy/entry.py)
        "run",
        "--state",
        str(state_dir),
        "--host",
        host,
        "--workers",
        str(workers),
        "--event-loop",
        event_loop or default_event_loop(),
        "--detach",
    ]
    try:
        done = subprocess.run(  # noqa: S603 (our own interpreter and module)
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProxyUnavailable(f"gitorch proxy did not start within {timeout:.0f} s") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise ProxyUnavailable(f"gitorch proxy did not start: {lines[-1]}", detail=tuple(lines))


def _translate(error: Any) -> ConfigError | ProxyRefused | ProxyUnavailable:
    """The proxy's error answer as the exception an in-process plane would raise."""
    if not isinstance(error, dict):
        return ProxyRefused(f"the proxy refused: {error!r}")
    kind = error.get("kind")
    message = str(error.get("message", "the proxy refused"))
    detail = tuple(str(line) for line in error.get("detail", []))
    if kind == "listen":
        return ListenError(message, detail=detail)
    if kind == "route":
        return RouteInvalid(message, detail=detail)
    if kind == "unavailable":  # a relay found no proxy behind it
        return ProxyUnavailable(message, detail=detail)
    return ProxyRefused(message, detail=detail)

"""``gitorch proxy run``: the built-in data plane as a process of its own.

The proxy is a coordinator and its worker processes (:class:`~gitorch.traffic.workers.
WorkerPool`): the workers proxy, the coordinator holds every listening socket, answers on
the control socket (:mod:`.control`) and keeps the last routing table in
``<state>/proxy/table.json``, so a proxy started with no daemon around serves what was
last applied. It never stops because a daemon went away: only ``gitorch proxy stop``,
SIGTERM/SIGINT, or a successor ends it.

**Replacing a running proxy** (an upgrade, ``gitorch proxy restart``, a unit's reload):
a new proxy started on the same state directory finds the old one on the control socket
and asks it to hand over. The old one sends its table, its per-version totals and every
listening socket (fd passing), and refuses changes from then on; the new one starts its
workers on those very sockets (they never close, so no connection is refused: new ones
wait in the kernel's queue for whichever process accepts first), applies the table,
tells the old one to release, and takes the control socket's path over. The released
proxy stops accepting, lets its open connections finish (a keep-alive client's next
request is answered with ``Connection: close``), and exits. If the new proxy dies before
it says release, the old one simply goes on serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitorch import __version__
from gitorch.errors import GitorchError
from gitorch.traffic.builtin.timing import Timeouts
from gitorch.traffic.listeners import SocketSet
from gitorch.traffic.proxy.control import (
    PROTOCOL,
    ProxyPaths,
    ProxyUnavailable,
    close_all,
    connect,
    receive,
    send,
)
from gitorch.traffic.proxy.keeper import Held, KeeperLink
from gitorch.traffic.routes import ListenError, RouteInvalid, fenced
from gitorch.traffic.table import RoutingTable
from gitorch.traffic.unix_paths import make_room, release
from gitorch.traffic.wire import (
    WireError,
    backend_figures_to_json,
    stats_to_json,
    table_from_json,
    table_to_json,
    version_figures_to_json,
)
from gitorch.traffic.workers import WorkerPool

log = logging.getLogger("gitorch.proxy")

#: Seconds a stopping or released proxy lets open connections finish.
DRAIN_TIMEOUT = 30.0
#: Seconds a control connection may stay silent (an apply's answer takes longer: the
#: timeout bounds waiting for the client, not the work).
CONTROL_TIMEOUT = 60.0


class ProxyServer:
    """One ``gitorch proxy`` process (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        workers: int = 1,
        timeouts: Timeouts | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        event_loop: str = "asyncio",
        keeper: KeeperLink | None = None,
        inherited: Held | None = None,
    ) -> None:
        """``keeper``: the link to this coordinator's socket keeper (which then holds the
        start lock for it); ``inherited``: sockets a dead predecessor listened on, kept
        by the keeper (see :mod:`.keeper`)."""
        self.paths = ProxyPaths.of(state_dir)
        self.event_loop = event_loop
        self.host = host
        self.workers = max(1, workers)
        self.timeouts = timeouts or Timeouts()
        self.drain_timeout = drain_timeout
        self.started_at = time.time()
        self.pool: WorkerPool | None = None
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._handing_over = threading.Event()  # exported: changes are refused
        self._listener: socket.socket | None = None
        self._apply_lock = threading.Lock()
        self.keeper = keeper
        self.inherited = inherited or Held()
        #: The table as the daemon last gave it, and when (a fence counts from then).
        self._applied: RoutingTable | None = None
        self._applied_at = time.monotonic()
        self._fenced = False

    # ------------------------------------------------------------------ lifecycle

    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Serve until stopped (or released to a successor); the exit code."""
        self.paths.make()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stopping.set())
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        locked = contextlib.nullcontext() if self.keeper else _start_lock(self.paths.start_lock)
        with locked:
            predecessor = self._find_predecessor()
            if predecessor is not None:
                self.inherited.close()
                self._take_over(predecessor)
            else:
                self._start_fresh()
            self._serve_control()
            self._write_pid()
        if self.keeper is not None:
            self.keeper.serving()
        log.info(
            "proxy %d serving (gitorch %s, %d workers)", os.getpid(), __version__, self.workers
        )
        if ready is not None:
            ready()
        while not self._stopping.wait(0.5):
            self._watch_fence()
        if self.keeper is not None:
            self.keeper.done()  # the keeper lets go of the sockets: they close with ours
        self._shut_down()
        return 0

    def _start_fresh(self) -> None:
        owned = self._socket_set()
        if self.inherited.sockets:
            log.info(
                "serving on the %d sockets the keeper held for a dead proxy",
                len(self.inherited.sockets),
            )
            owned.adopt(self.inherited.described, self.inherited.sockets)
            self.inherited = Held()
        self.pool = WorkerPool(
            self.host,
            workers=self.workers,
            timeouts=self.timeouts,
            sockets=owned,
            event_loop=self.event_loop,
        )
        table = self._load_table()
        if table is not None:
            log.info("serving the last applied table (%d routes)", len(table.routes))
            self._applied = table
            try:
                self.pool.apply(table)
            except GitorchError as exc:
                log.error("the last table is only partly served: %s", exc.message)

    def _find_predecessor(self) -> socket.socket | None:
        """A connection to a proxy already serving this state directory, or None."""
        if not self.paths.socket.exists():
            return None
        try:
            sock = connect(self.paths.socket, 5.0)
        except ProxyUnavailable:
            self.paths.socket.unlink(missing_ok=True)  # left by a proxy that died
            return None
        return sock

    def _take_over(self, old: socket.socket) -> None:
        """Take the predecessor's sockets, table and totals; then release it."""
        with old:
            send(old, {"op": "handover", "protocol": PROTOCOL})
            answer, fds = receive(old)
            if "error" in answer:
                close_all(fds)
                raise ProxyUnavailable(f"the running proxy refused to hand over: {answer}")
            try:
                table = table_from_json(answer["table"])
                sockets = [socket.socket(fileno=fd) for fd in fds]
                fds = []
                owned = self._socket_set()
                owned.adopt(answer["sockets"], sockets)
            except (KeyError, WireError, OSError) as exc:
                close_all(fds)
                raise ProxyUnavailable(f"the running proxy's handover was unusable: {exc}") from exc
            self.pool = WorkerPool(
                self.host,
                workers=self.workers,
                timeouts=self.timeouts,
                sockets=owned,
                event_loop=self.event_loop,
            )
            self.pool.ledger.take_over(answer.get("ledger", {}))
            self._applied = table
            try:
                self.pool.apply(table)
            except GitorchError as exc:
                log.error("the handed-over table is only partly served: %s", exc.message)
            self._keep_table(table)
            send(old, {"op": "release"})
            receive(old)
        log.info("took over from proxy %s", answer.get("pid"))

    def _socket_set(self) -> SocketSet:
        """The pool's sockets; the keeper, if any, is told of every change."""
        owned = SocketSet(self.host, self.workers)
        keeper = self.keeper
        if keeper is not None:
            owned.on_change = lambda: keeper.hold(*owned.export())
        return owned

    def _shut_down(self) -> None:
        """Stop taking connections, let open ones finish (bounded), stop the workers."""
        pool = self.pool
        if pool is not None and not self._released.is_set():
            log.info("stopping: draining open connections")
            with contextlib.suppress(GitorchError):
                pool.apply(RoutingTable())  # every listener closes (queued ones served)
        if pool is not None:
            self._drain(pool)
            pool.close()
        if self._listener is not None:
            self._listener.close()
        self._remove_own_files()
        log.info("proxy %d stopped", os.getpid())

    def _drain(self, pool: WorkerPool) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while time.monotonic() < deadline:
            try:
                if pool.connections() == 0:
                    return
            except GitorchError:
                return
            time.sleep(0.1)
        log.warning("drain timeout: closing the connections still open")

    # ------------------------------------------------------------------ files

    def _load_table(self) -> RoutingTable | None:
        try:
            return table_from_json(json.loads(self.paths.table.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, WireError) as exc:
            log.error("cannot read the last table %s: %s", self.paths.table, exc)
            return None

    def _keep_table(self, table: RoutingTable) -> None:
        """Save ``table``; a full disk must not stop the data plane from following the
        daemon (a drained replica would keep its traffic): served, but not kept."""
        try:
            self._save_table(table)
        except OSError as exc:
            log.error(
                "cannot keep the routing table in %s (%s): serving it all the same; "
                "a proxy started afresh would serve the last one kept",
                self.paths.table,
                exc,
            )

    def _save_table(self, table: RoutingTable) -> None:
        tmp = self.paths.root / ".table.json.tmp"
        tmp.write_text(json.dumps(table_to_json(table)), encoding="utf-8")
        os.replace(tmp, self.paths.table)

    def _write_pid(self) -> None:
        """The pid file, for people and scripts (the proxy is found on its control
        socket): a full disk must not stop a proxy that already took the sockets over
        from its predecessor (found by the chaos soak: the released one was gone, and no
        one served)."""
        tmp = self.paths.root / ".proxy.pid.tmp"
        try:
            tmp.write_text(f"{os.getpid()}\n", encoding="ascii")
            os.replace(tmp, self.paths.pid)
        except OSError as exc:
            log.error(
                "cannot write the pid file %s (%s): serving all the same", self.paths.pid, exc
            )

    def _remove_own_files(self) -> None:
        """The pid file and socket path, unless a successor owns them by now."""
        with contextlib.suppress(OSError):
            if self.paths.pid.read_text().strip() == str(os.getpid()):
                self.paths.pid.unlink()
        if self._listener is not None and not self._released.is_set():
            self.paths.socket.unlink(missing_ok=True)
            release(self.paths.socket)

    # ------------------------------------------------------------------ control socket

    def _serve_control(self) -> None:
        """Listen on a fresh path, then move it over the control socket's (atomic: a
        client connects to the old proxy or the new one, never to nothing)."""
        make_room(self.paths.socket)
        fresh = self.paths.socket.parent / f".control-{os.getpid()}.sock"
        fresh.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(fresh))
        finally:
            os.umask(old_umask)
        listener.listen(64)
        os.replace(fresh, self.paths.socket)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="proxy-control", daemon=True).start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(CONTROL_TIMEOUT)  # a silent client does not hold a thread for good
        with conn:
            try:
                request, fds = receive(conn)
                close_all(fds)
                if request.get("op") == "handover":
                    self._hand_over(conn)
                    return
                send(conn, self._answer(request))
            except (OSError, ConnectionError) as exc:
                log.debug("control connection ended: %s", exc)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        pool = self.pool
        assert pool is not None
        op = request.get("op")
        try:
            if op == "hello":
                return {
                    "ok": True,
                    "protocol": PROTOCOL,
                    "version": __version__,
                    "pid": os.getpid(),
                    "keeper": self.keeper.pid if self.keeper and self.keeper.alive else None,
                    "since": pool.ledger.since,
                    "startedAt": self.started_at,
                    "workers": pool.workers,
                    "host": self.host,
                    "eventLoop": self.event_loop,
                }
            if op == "health":
                health = pool.health()
                released = self._released.is_set() or self._stopping.is_set()
                return {
                    "ok": health.ok and not released,
                    "message": "stopping" if released else health.message,
                    "pid": os.getpid(),
                    "since": pool.ledger.since,
                    "routes": len(pool.table.routes),
                    "fenced": self._fenced,
                }
            if op == "apply":
                return self._apply(request)
            if op == "figures":
                figures = pool.figures(str(request["service"]))
                return {"ok": True, "backends": [backend_figures_to_json(f) for f in figures]}
            if op == "versions":
                versions = pool.version_figures(str(request["service"]))
                return {
                    "ok": True,
                    "versions": {v: version_figures_to_json(f) for v, f in versions.items()},
                }
            if op == "stats":
                stats = pool.backend_stats(str(request["service"]), str(request["backend"]))
                return {"ok": True, "stats": stats_to_json(stats)}
            if op == "serving":
                return {"ok": True, "backends": sorted(pool.serving())}
            if op == "stop":
                self._stopping.set()
                return {"ok": True}
            return _error("other", f"unknown request {op!r}")
        except ListenError as exc:
            return _error("listen", exc.message, exc.detail)
        except RouteInvalid as exc:
            return _error("route", exc.message, exc.detail)
        except (WireError, KeyError, TypeError, ValueError) as exc:
            return _error("other", f"bad {op} request: {exc}")
        except GitorchError as exc:
            return _error("other", exc.message, exc.detail)

    def _apply(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.pool is not None
        if self._handing_over.is_set() or self._released.is_set():
            return _error("busy", "the proxy is handing over to its successor: try again")
        table = table_from_json(request["table"])
        with self._apply_lock:
            self._applied, self._applied_at = table, time.monotonic()
            if self._fenced:
                log.warning("the daemon is back: serving its table again")
                self._fenced = False
            self._keep_table(table)  # even when a port fails: the rest is served
            self.pool.apply(table)
        return {"ok": True}

    def _watch_fence(self) -> None:
        """Withdraw this host's own replicas once the daemon has been silent past the
        table's fence (:class:`~gitorch.traffic.table.Fence`): cut off, they are being
        replaced elsewhere, and must not serve as stale copies when the link returns."""
        table = self._applied
        if self._fenced or table is None or table.fence is None or self.pool is None:
            return
        silent = time.monotonic() - self._applied_at
        if silent < table.fence.after:
            return
        with self._apply_lock:
            if self._applied is not table:
                return  # a table arrived meanwhile
            try:
                self.pool.apply(fenced(table))
            except GitorchError as exc:
                log.error("could not withdraw this host's replicas: %s", exc.message)
                return
            self._fenced = True
        log.warning(
            "no table from the daemon for %.0fs (fence %.0fs): this host's %d replica(s) "
            "withdrawn from routes that other hosts' replicas serve",
            silent,
            table.fence.after,
            len(table.fence.own),
        )

    def _hand_over(self, conn: socket.socket) -> None:
        """Give a successor the table, totals and sockets; release when it says so."""
        pool = self.pool
        assert pool is not None
        with self._apply_lock:
            if self._handing_over.is_set() or self._released.is_set():
                send(conn, _error("busy", "already handing over"))
                return
            self._handing_over.set()
            described, sockets = pool.export_sockets()
            answer = {
                "ok": True,
                "pid": os.getpid(),
                "table": table_to_json(self._applied or pool.table),
                "ledger": pool.version_totals(),
                "sockets": described,
            }
        try:
            send(conn, answer, [s.fileno() for s in sockets])
            conn.settimeout(60.0)
            request, fds = receive(conn)
            close_all(fds)
        except (OSError, ConnectionError) as exc:
            log.warning("the successor went away before release (%s): serving on", exc)
            self._handing_over.clear()
            return
        if request.get("op") != "release":
            self._handing_over.clear()
            return
        pool.release()
        self._released.set()
        if self.keeper is not None:
            self.keeper.done()  # the successor holds the sockets now
        send(conn, {"ok": True})
        log.info("released to a successor: draining")
        self._stopping.set()


def _error(kind: str, message: str, detail: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message, "detail": list(detail)}}


@contextlib.contextmanager
def _start_lock(path: Path) -> Any:
    """One proxy starts (or takes over) at a time per state directory."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def detach(log_path: Path, timeout: float = 60.0) -> Callable[[], None]:
    """Become a daemon (double fork, new session, stdio to ``log_path``) and return the
    callback that tells the original process the proxy serves; the original process waits
    for it and exits 0 then, or 1 with the log's last lines when the proxy failed first.
    Call before any thread or worker process is started."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os._exit(_wait_ready(read_end, log_path, timeout))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(write_end, b"ok")
            os.close(write_end)

    return ready


def _wait_ready(read_end: int, log_path: Path, timeout: float) -> int:
    """In the original process: 0 once the detached proxy serves, else 1 (and why)."""
    import select

    ready, _, _ = select.select([read_end], [], [], timeout)
    answer = os.read(read_end, 16) if ready else b""
    if answer == b"ok":
        return 0
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
    except OSError:
        tail = []
    why = "did not start in time" if not ready else "exited before serving"
    os.write(2, f"error: the proxy {why}\n".encode())
    for line in tail:
        os.write(2, f"  {line}\n".encode())
    return 1

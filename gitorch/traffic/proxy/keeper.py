"""The keeper of a proxy's listening sockets: the process that outlives its coordinator.

``gitorch proxy run`` is two processes: the *keeper* (this module's :func:`keep`), which
does nothing but hold a duplicate of every listening socket, and its child, the
*coordinator* (:class:`~gitorch.traffic.proxy.server.ProxyServer` and its workers). The
coordinator tells the keeper which sockets it listens on every time that changes (fd
passing over a socketpair, acknowledged). When the coordinator dies without saying it
stops (SIGKILL, a crash, the OOM killer), its workers exit with it, but the sockets do
not close: the keeper still holds them, so the kernel keeps queueing new connections
(up to the backlog) instead of refusing them. The keeper forks a new coordinator at
once, handing it those sockets; it serves the last applied table from them, and the
queued connections are accepted by its workers. Clients see a pause of about the
restart's length (figures in bench/README.md), never a refused connection — what users
of HAProxy's and nginx's master processes expect.

The keeper is tiny on purpose (no thread, no event loop, no routing): what is most
likely to die is the coordinator, which does the work. A keeper that dies leaves the
coordinator serving on (unkept: a later kill of it is then seen as before, until the
daemon starts a new proxy). The keeper takes the state directory's start lock before
each fork and lets go once the new coordinator serves, so a proxy started meanwhile (by
a daemon that found none answering) waits and then takes over through the ordinary
handover, instead of racing it for the ports.

Messages (child -> keeper, each one packet of JSON, descriptors attached)::

    serving                          the coordinator answers on its control socket
    hold  sockets: [{port, copy}], last  + the fds; after the last part: "ok" (the
                                     keeper closed what it held before)
    done                             it stops or was released: do not restart it; "ok"
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("gitorch.proxy")

#: Most descriptors one ``hold`` message carries (the kernel's SCM_MAX_FD is 253).
FDS_PER_MESSAGE = 250
#: A coordinator that dies this soon after it started, again and again, is restarted
#: no faster than once per :data:`RESTART_PAUSE` seconds.
QUICK_DEATH = 5.0
RESTART_PAUSE = 1.0
#: Largest message (a ``hold`` of :data:`FDS_PER_MESSAGE` sockets is about 8 KiB).
MAX_MESSAGE = 1 << 16


@dataclass
class Held:
    """Sockets a keeper holds for its coordinator, as ``SocketSet.export`` gives them."""

    described: list[dict[str, int]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def replace(self, described: list[dict[str, int]], sockets: list[socket.socket]) -> None:
        self.close()
        self.described, self.sockets = described, sockets

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.described, self.sockets = [], []


class KeeperLink:
    """The coordinator's end of the link to its keeper (every method is best effort: a
    keeper that is gone leaves the coordinator serving, unkept)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._gone = False
        self.pid = os.getppid()  # made in the forked coordinator: the keeper is its parent

    @property
    def alive(self) -> bool:
        """The keeper still holds the sockets (as far as this side knows)."""
        return not self._gone and os.getppid() == self.pid

    def serving(self) -> None:
        self._send({"op": "serving"})

    def hold(self, described: list[dict[str, int]], sockets: list[socket.socket]) -> None:
        """Tell the keeper the sockets listened on now (it closes the ones it had)."""
        fds = [s.fileno() for s in sockets]
        parts = max(1, -(-len(fds) // FDS_PER_MESSAGE))
        for part in range(parts):
            window = slice(part * FDS_PER_MESSAGE, (part + 1) * FDS_PER_MESSAGE)
            last = part == parts - 1
            message = {"op": "hold", "sockets": described[window], "last": last}
            if not self._send(message, fds[window], answered=last):
                return

    def done(self) -> None:
        self._send({"op": "done"}, answered=True)

    def _send(
        self, message: dict[str, Any], fds: list[int] | None = None, *, answered: bool = False
    ) -> bool:
        """One message (one packet, descriptors attached); whether the keeper got it."""
        with self._lock:
            if self._gone:
                return False
            try:
                self._sock.settimeout(5.0)
                socket.send_fds(self._sock, [json.dumps(message).encode()], fds or [])
                if answered and self._sock.recv(16) != b"ok":
                    raise ConnectionError("no answer")
            except OSError as exc:
                self._gone = True
                log.warning("the socket keeper is gone (%s): serving on, unkept", exc)
                return False
            return True


def keep(
    serve: Callable[[KeeperLink, Held], int],
    start_lock: Path,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run ``serve(link, inherited)`` in a forked coordinator, again whenever it dies
    without saying ``done``; the exit code of the last one. Call from a process with no
    other thread (it forks)."""
    held = Held()
    child = 0

    def forward(signum: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    served_once = False
    lock: BinaryIO | None = None
    while True:
        # Held from before the fork until the new coordinator serves: across a restart
        # too, so a proxy started meanwhile waits for this one and takes over from it.
        lock = lock or _lock(start_lock)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started = time.monotonic()
        child = os.fork()
        if child == 0:  # the coordinator
            ours.close()
            lock.close()  # the keeper's own description stays locked until it says so
            code = 1
            try:
                code = serve(KeeperLink(theirs), held)
            except BaseException:
                log.exception("the proxy coordinator failed")
            finally:
                os._exit(code)
        theirs.close()

        def on_serving(first: bool = not served_once) -> None:
            nonlocal lock
            if lock is not None:
                _unlock(lock)
                lock = None
            if first and ready is not None:
                ready()

        serving, done = _listen(ours, held, on_serving)
        ours.close()
        served_once = served_once or serving
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if done or not served_once:
            held.close()
            if lock is not None:
                _unlock(lock)
            return code if code >= 0 else 1
        why = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.warning(
            "proxy coordinator %d died (%s): starting a new one on the %d held sockets",
            child,
            why,
            len(held.sockets),
        )
        if time.monotonic() - started < QUICK_DEATH and not serving:
            time.sleep(RESTART_PAUSE)  # it dies starting: no busy loop


def _listen(conn: socket.socket, held: Held, on_serving: Callable[[], None]) -> tuple[bool, bool]:
    """Serve the coordinator's messages until its end closes: (it served, it said done)."""
    serving = done = False
    described: list[dict[str, int]] = []
    received: list[socket.socket] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, FDS_PER_MESSAGE)
        except OSError:
            data, fds = b"", []
        received.extend(socket.socket(fileno=fd) for fd in fds)
        if not data:
            for sock in received:
                sock.close()
            return serving, done
        message = json.loads(data)
        op = message.get("op")
        if op == "serving":
            serving = True
            on_serving()
        elif op == "hold":
            described.extend(message.get("sockets", []))
            if message.get("last", True):
                held.replace(described, received)
                described, received = [], []
                conn.sendall(b"ok")
        elif op == "done":
            done = True
            held.close()
            conn.sendall(b"ok")


def _lock(path: Path) -> BinaryIO:
    handle = path.open("ab")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _unlock(handle: BinaryIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

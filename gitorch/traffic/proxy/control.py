"""The proxy's control channel: a unix socket in the state directory, one request per
connection, each a length-prefixed JSON object, with file descriptors attached when a
proxy hands its listening sockets to its successor (SCM_RIGHTS).

Requests (``op``) and what they answer (``{"ok": true, ...}`` or ``{"error": {...}}``)::

    hello                      version, pid, since, workers, host
    apply     table            ok | error kind listen|route|busy|other, message, detail
    figures   service          backends: [backend figures]
    versions  service          versions: {version: version figures}
    stats     service backend  stats: {inFlight, requests, errors} | null
    health                     ok, message, pid, since, workers alive, routes
    stop                       ok (the proxy stops taking connections and drains)
    handover                   table, ledger, sockets (+ the socket fds): to a successor,
                               which answers on the same connection with "release"

The socket file is created mode 0600 in a 0700 folder: only its owner can drive the proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitorch.errors import GitorchError
from gitorch.traffic.unix_paths import KERNEL_MAX, fitting

#: Bumped when a request changes meaning; a proxy answers ``hello`` with its own.
PROTOCOL = 1
#: Largest message accepted (a table of thousands of backends fits easily).
MAX_MESSAGE = 16 << 20
#: Most descriptors one message may carry.
MAX_FDS = 4096


class ProxyUnavailable(GitorchError):
    """The proxy did not answer on its control socket (not running, or stuck)."""


class ProxyRefused(GitorchError):
    """The proxy answered a request with an error it could not map to another type."""


@dataclass(frozen=True)
class ProxyPaths:
    """Where a state directory's proxy keeps its socket, pid, log and last table."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path) -> ProxyPaths:
        return cls(Path(state_dir) / "proxy")

    @property
    def socket(self) -> Path:
        """The control socket (elsewhere when its path in the state directory is too
        long for a unix socket: :mod:`gitorch.traffic.unix_paths`)."""
        # Room for the fresh sibling a starting proxy binds first (".control-PID.sock").
        return fitting(self.root / "control.sock", KERNEL_MAX - 12)

    @property
    def pid(self) -> Path:
        return self.root / "proxy.pid"

    @property
    def log(self) -> Path:
        return self.root / "proxy.log"

    @property
    def table(self) -> Path:
        return self.root / "table.json"

    @property
    def start_lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def stopped(self) -> Path:
        """Written by ``gitorch proxy stop``: a running daemon does not start the proxy
        again while it exists (a new daemon or ``gitorch proxy run`` removes it)."""
        return self.root / "stopped"

    def make(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """One message (and ``fds``) on a connected unix stream socket."""
    body = json.dumps(message, separators=(",", ":")).encode()
    data = struct.pack("!I", len(body)) + body
    if fds:
        first = socket.send_fds(sock, [data[:4]], fds)
        sock.sendall(data[first:])
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it; :class:`ConnectionError` when
    the peer closed first."""
    fds: list[int] = []
    header = b""
    while len(header) < 4:
        chunk, more, _, _ = socket.recv_fds(sock, 4 - len(header), MAX_FDS)
        if not chunk:
            close_all(fds + list(more))
            raise ConnectionError("the peer closed the control connection")
        fds.extend(more)
        header += chunk
    (size,) = struct.unpack("!I", header)
    if size > MAX_MESSAGE:
        close_all(fds)
        raise ConnectionError(f"control message of {size} bytes refused")
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            close_all(fds)
            raise ConnectionError("the peer closed the control connection mid-message")
        body += chunk
    try:
        message = json.loads(body)
    except ValueError as exc:
        close_all(fds)
        raise ConnectionError(f"control message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        close_all(fds)
        raise ConnectionError("control message is not an object")
    return message, fds


def connect(path: Path, timeout: float) -> socket.socket:
    """A connection to the control socket at ``path``; :class:`ProxyUnavailable`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ProxyUnavailable(f"no proxy answers on {path}: {exc.strerror or exc}") from exc
    return sock


def call(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One request, its answer (descriptors in an answer are closed: only a handover
    takes them, on a connection of its own)."""
    with connect(path, timeout) as sock:
        try:
            send(sock, request)
            answer, fds = receive(sock)
        except (OSError, ConnectionError) as exc:
            raise ProxyUnavailable(
                f"the proxy on {path} did not answer {request.get('op')!r}: {exc}"
            ) from exc
    close_all(fds)
    return answer


def close_all(fds: list[int]) -> None:
    """Close descriptors that came with a message and are not wanted."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

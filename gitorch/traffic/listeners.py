"""Listening sockets of the built-in data plane, and who owns them.

A balancer never has to bind its own sockets: it asks a :class:`ListenerSource` for the
listening sockets of a route's port. Three sources exist:

* :class:`Binding` opens them itself (the balancer on a thread of ``gitorch apply``);
* :class:`SocketSet` (the coordinator of worker processes, and ``gitorch proxy``) opens
  ``copies`` sockets per port sharing it with ``SO_REUSEPORT``, one per worker, and keeps
  a copy of each: a dead worker's replacement gets the same socket (its queue of
  accepted-by-the-kernel connections waits for it instead of being reset), and a proxy
  that is replaced hands every socket to the next one (fd passing): the sockets never
  close, so no connection is refused during an upgrade;
* :class:`Handed` (a worker) holds the sockets the coordinator sent it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from gitorch.traffic.holders import descends_from, port_holders
from gitorch.traffic.routes import ListenError, listen_failure

#: Listen queue length of a route's socket (nginx's default on Linux).
BACKLOG = 511


class ListenerSource(Protocol):
    """Where a balancer gets a route's listening sockets (it owns what it gets)."""

    def take(self, service: str, port: int) -> list[socket.socket]:
        """Listening, non-blocking sockets for ``port``; raises :class:`ListenError`."""
        ...


def open_listeners(
    host: str, port: int, *, reuse_port: bool = False, service: str = ""
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port`` (one per address family
    the host resolves to); :class:`ListenError` says why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ListenError(listen_failure(service, host, port, exc)) from exc
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in listeners:
            sock.close()
        raise ListenError(listen_failure(service, host, port, exc)) from exc
    return listeners


class Binding:
    """Opens a route's sockets when asked (see the module docstring)."""

    def __init__(self, host: str, *, reuse_port: bool = False) -> None:
        self.host = host
        self.reuse_port = reuse_port

    def take(self, service: str, port: int) -> list[socket.socket]:
        return open_listeners(self.host, port, reuse_port=self.reuse_port, service=service)


class Handed:
    """Sockets a coordinator sent to this process, per port, until a balancer takes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ports: dict[int, list[socket.socket]] = {}

    def give(self, port: int, sockets: Iterable[socket.socket]) -> None:
        with self._lock:
            for old in self._ports.pop(port, []):
                old.close()
            self._ports[port] = [*sockets]

    def keep_only(self, ports: Iterable[int]) -> None:
        """Close what was handed for ports no route uses any more (never taken)."""
        wanted = set(ports)
        with self._lock:
            for port in [p for p in self._ports if p not in wanted]:
                for sock in self._ports.pop(port):
                    sock.close()

    def take(self, service: str, port: int) -> list[socket.socket]:
        with self._lock:
            found = self._ports.pop(port, None)
        if not found:
            raise ListenError(f"service {service}: no listening socket was handed for port {port}")
        for sock in found:
            sock.setblocking(False)
        return found


class SocketSet:
    """Every port's listening sockets, ``copies`` per port (see the module docstring).

    ``sockets(port)`` are the coordinator's own copies, indexed by worker; a worker (or
    the local balancer) gets a duplicate. Not thread-safe: the coordinator's lock guards it.
    """

    def __init__(self, host: str, copies: int) -> None:
        self.host = host
        self.copies = max(1, copies)
        self._ports: dict[int, list[list[socket.socket]]] = {}  # port -> per copy: families
        #: Called after the set of sockets changed (the proxy tells its keeper).
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def ports(self) -> set[int]:
        return set(self._ports)

    def ensure(self, service: str, port: int) -> None:
        """Open ``port``'s sockets unless held already; :class:`ListenError` when not.

        ``SO_REUSEPORT`` lets any process of the same user bind the port too: another
        cluster's proxy (another state directory) would then silently share it, and
        clients would get answers from two clusters. So a port some other process listens
        on is refused, naming that process."""
        if port in self._ports:
            return
        foreign = [
            holder
            for holder in port_holders([port], host=self.host).get(port, [])
            if holder.pid is None or not descends_from(holder.pid, os.getpid())
        ]
        if foreign:
            raise ListenError(
                f"service {service}: cannot listen on {self.host}:{port}: the port is held by "
                + ", ".join(h.describe() for h in foreign)
            )
        opened: list[list[socket.socket]] = []
        try:
            for _ in range(self.copies):
                opened.append(open_listeners(self.host, port, reuse_port=True, service=service))
        except ListenError:
            for copy in opened:
                for sock in copy:
                    sock.close()
            raise
        self._ports[port] = opened
        self._changed()

    def duplicate(self, port: int, index: int) -> list[socket.socket]:
        """New descriptors of copy ``index`` of ``port`` (for a worker or a balancer)."""
        copies = self._ports[port]
        return [sock.dup() for sock in copies[index % len(copies)]]

    def copy_of(self, port: int, index: int) -> list[socket.socket]:
        """Copy ``index`` of ``port`` itself (to send: sending duplicates it)."""
        copies = self._ports[port]
        return copies[index % len(copies)]

    def close_except(self, ports: Iterable[int]) -> None:
        """Close the copies of ports not in ``ports``. The socket itself closes when the
        last worker holding it lets go (after accepting what the kernel had queued)."""
        wanted = set(ports)
        leaving = [p for p in self._ports if p not in wanted]
        for port in leaving:
            for copy in self._ports.pop(port):
                for sock in copy:
                    sock.close()
        if leaving:
            self._changed()

    def close(self) -> None:
        self.close_except(())

    def export(self) -> tuple[list[dict[str, int]], list[socket.socket]]:
        """Every socket, for a successor: (what each is, in order), sockets."""
        described: list[dict[str, int]] = []
        sockets: list[socket.socket] = []
        for port, copies in sorted(self._ports.items()):
            for index, copy in enumerate(copies):
                for sock in copy:
                    described.append({"port": port, "copy": index})
                    sockets.append(sock)
        return described, sockets

    def adopt(self, described: list[dict[str, int]], sockets: list[socket.socket]) -> None:
        """Take over a predecessor's sockets (:meth:`export` on its side). Ports get as
        many copies as this set has: extra ones are closed, missing ones opened."""
        received: dict[int, dict[int, list[socket.socket]]] = {}
        for about, sock in zip(described, sockets, strict=True):
            sock.setblocking(False)
            received.setdefault(int(about["port"]), {}).setdefault(int(about["copy"]), []).append(
                sock
            )
        for port, by_copy in received.items():
            copies = [by_copy[i] for i in sorted(by_copy)]
            for extra in copies[self.copies :]:
                for sock in extra:
                    sock.close()
            copies = copies[: self.copies]
            while len(copies) < self.copies:
                try:
                    copies.append(open_listeners(self.host, port, reuse_port=True))
                except ListenError:
                    break  # served by fewer copies: the kernel spreads over those
            self._ports[port] = copies
        self._changed()

"""HAProxy's runtime API: commands on its admin socket (pure I/O, no decisions but order).

:meth:`RuntimeApi.switch` brings the running worker to new server addresses, weights and
states, and new map entries, without a reload. Every command that adds capacity is sent
before any that removes some, and a new replica takes a slot that was already free, so a
switch never passes through an instant where a route has no server in rotation (HAProxy
answers that instant with "503 No server is available", which no retry covers).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from gitorch.traffic.haproxy.config import Server
from gitorch.traffic.haproxy.errors import HAProxyError

log = logging.getLogger("gitorch.traffic.haproxy")


def cli(path: Path, command: str, timeout: float) -> str:
    """One command on a HAProxy CLI socket (admin or master); its whole answer."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    except OSError as exc:
        raise HAProxyError(f"haproxy socket {path.name}: {command!r} failed: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")


class RuntimeApi:
    """The admin socket of the serving worker."""

    def __init__(self, admin_sock: Path, timeout: float) -> None:
        self.admin_sock = admin_sock
        self.timeout = timeout
        #: The latest runtime API commands and reloads, (time.time(), what), oldest first.
        self.changes: deque[tuple[float, str]] = deque(maxlen=2000)

    def trace(self, change: str) -> None:
        """Keep (wall time, change) of every runtime command and reload: the debug log and
        :attr:`changes` let a client's failures be matched to what HAProxy was told."""
        self.changes.append((time.time(), change))
        log.debug("haproxy: %s", change)

    def ask(self, command: str) -> str:
        return cli(self.admin_sock, command, self.timeout)

    def command(self, command: str) -> None:
        self.trace(command)
        answer = self.ask(command).strip()
        if answer and not answer.startswith(("IP changed", "no need to change", "port changed")):
            raise HAProxyError(f"haproxy runtime API refused {command!r}: {answer}")

    def stat_rows(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat`` by (proxy name, server name)."""
        text = self.ask("show stat")
        reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {(row["pxname"], row["svname"]): row for row in reader if row.get("pxname")}

    def info(self, field: str) -> int | None:
        """One number of ``show info`` (None when absent)."""
        answer = self.ask("show info")
        match = re.search(rf"^{re.escape(field)}: (\d+)$", answer, re.M)
        return int(match.group(1)) if match else None

    def worker_pid(self) -> int:
        """Pid of the worker serving now (changes at each reload, never otherwise)."""
        pid = self.info("Pid")
        if pid is None:
            raise HAProxyError("unexpected 'show info' answer: no Pid")
        return pid

    def switch(
        self,
        applied: Mapping[str, Server],
        servers: Mapping[str, Server],
        applied_maps: Mapping[Path, dict[str, str]],
        maps: Mapping[Path, dict[str, str]],
    ) -> None:
        """Bring the running worker to ``servers`` and ``maps`` with runtime API commands.

        The order is what makes a switch lossless. Roundrobin answers "503 No server is
        available" the instant a backend has no server that is ready *and* weighted, and
        nothing (not ``retries``, not ``redispatch``) retries that. So every command that
        adds capacity runs before any command that removes some: while the first phase
        runs, every server of the old table still serves; while the second runs, every
        server of the new one already does. A route with a server in both tables thus
        never passes through an empty state, whatever the change (a blue-green switch
        back takes the new colour away and gives the old one its weight in one table).
        """
        changed = [(n, s, applied.get(n)) for n, s in servers.items()]
        changed = [(n, new, old) for n, new, old in changed if old != new]
        early, late = self._map_commands(applied_maps, maps)
        for command in early:
            self.command(command)
        # Phase 1, capacity only grows: servers arriving on a slot that was not serving,
        # servers coming back to ready, weights going up.
        repoint: list[tuple[str, Server, Server]] = []
        lower: list[tuple[str, Server, Server]] = []
        for name, new, old in changed:
            if old is None or moved(old, new):
                if old is not None and old.state == "ready":
                    repoint.append((name, new, old))  # serving now: phase 2
                else:
                    self._point(name, new, old)
                continue
            if new.state == "ready" and (old.state != "ready" or new.weight > old.weight):
                if new.weight != old.weight:
                    self.command(f"set server {name} weight {new.weight}")
                if old.state != "ready":
                    self.command(f"set server {name} state ready")
            else:
                lower.append((name, new, old))
        # Phase 2, capacity shrinks. First slots that serve now and must point elsewhere
        # (only when no free slot was left: _plan_layout avoids it), each out of rotation
        # only while it changes; then weights going down; last, drain and maintenance.
        for name, new, old in repoint:
            self.command(f"set server {name} state maint")
            self._point(name, new, replace(old, state="maint"))
        for name, new, old in lower:
            if new.weight < old.weight:
                self.command(f"set server {name} weight {new.weight}")
        for name, new, old in lower:
            if new.state != old.state:
                self.command(f"set server {name} state {new.state}")
        for command in late:
            self.command(command)

    def _point(self, name: str, new: Server, old: Server | None) -> None:
        """A slot not in rotation gets ``new``'s address and weight, then its state."""
        if old is None or moved(old, new):
            self.command(f"set server {name} addr {new.host} port {new.port}")
        if old is None or old.weight != new.weight:
            self.command(f"set server {name} weight {new.weight}")
        if old is None or old.state != new.state:
            self.command(f"set server {name} state {new.state}")

    @staticmethod
    def _map_commands(
        applied_maps: Mapping[Path, dict[str, str]], maps: Mapping[Path, dict[str, str]]
    ) -> tuple[list[str], list[str]]:
        """Map updates split around the server changes: (before, after).

        A sticky map entry sends a client to a version's group backend, so it is removed
        before that group's servers leave and added only after they serve. The server map
        names the version of each slot for ``Set-Cookie``: its entries arrive before the
        slots serve and leave after.
        """
        early: list[str] = []
        late: list[str] = []
        for path, entries in maps.items():
            applied = applied_maps.get(path, {})
            sticky = path.name.endswith(".sticky.map")
            gone = [f"del map {path} {key}" for key in applied.keys() - entries.keys()]
            put = [
                f"{'set' if key in applied else 'add'} map {path} {key} {value}"
                for key, value in entries.items()
                if applied.get(key) != value
            ]
            early += gone if sticky else put
            late += put if sticky else gone
        return early, late


def moved(old: Server, new: Server) -> bool:
    return (old.host, old.port) != (new.host, new.port)

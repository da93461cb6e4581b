"""Who holds a TCP listening port on this host: for messages that name the holder.

Linux only (the kernel's socket diagnostics and ``/proc/PID/fd``); elsewhere, or without
the permission to read another process's file descriptors, the holder is unknown and
callers say so. Reading is cheap (one pass over /proc per call) and never raises.

The listening sockets come from netlink's ``sock_diag``, which the kernel filters by state:
``/proc/net/tcp`` lists every connection too, and a busy host's (70,000 lines while the
test suite ran) took ~0.1 s of kernel time to read, more than the rest of the check. It
is read when netlink is refused (a sandbox), or for a ``proc`` other than ``/proc``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_LISTEN_FIELD = f" {_LISTEN} "


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a port."""

    port: int
    pid: int | None  # None: a socket whose process could not be found
    command: str = ""
    address: str = ""  # the address it listens on ("0.0.0.0", "::": every address)

    def describe(self) -> str:
        if self.pid is None:
            return "an unknown process"
        return f"pid {self.pid} ({self.command or '?'})"


_PROC = Path("/proc")

# netlink's sock_diag (linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
#: inet_diag_req_v2: family, protocol, extensions, pad, states; then an empty socket id.
_DIAG_REQUEST = struct.Struct("=BBBBI48x")
_SOURCE_PORT = struct.Struct("!H")  # inet_diag_msg: 4 bytes in, big-endian
_INODE = struct.Struct("=I")  # inet_diag_msg: after the socket id and four counters
_SOURCE_PORT_AT, _INODE_AT = 4, 4 + 48 + 16
_SOURCE_ADDRESS_AT = 8  # inet_diag_sockid's src: 16 bytes (IPv4: the first 4)

#: A listening socket: (port, address).
Listener = tuple[int, str]


def _listening_inodes(ports: Collection[int], proc: Path) -> dict[str, Listener]:
    """socket inode -> (port, address), for TCP sockets listening on ``ports``."""
    if proc == _PROC:
        found = _listening_by_netlink(ports)
        if found is not None:
            return found
    return _listening_in_proc(ports, proc)


def _listening_by_netlink(ports: Collection[int]) -> dict[str, Listener] | None:
    """:func:`_listening_inodes` from the kernel's socket diagnostics (None: refused)."""
    found: dict[str, Listener] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(2.0)  # the kernel answers at once; never wait on it for long
            for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                request = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
                header = _NLMSG_HEADER.pack(
                    _NLMSG_HEADER.size + len(request),
                    _SOCK_DIAG_BY_FAMILY,
                    _NLM_F_REQUEST | _NLM_F_DUMP,
                    sequence,
                    0,
                )
                sock.sendto(header + request, (0, 0))
                if not _read_dump(sock, ports, found):
                    return None
    except (OSError, AttributeError, struct.error):  # no AF_NETLINK, refused, cut short
        return None
    return found


def _read_dump(sock: socket.socket, ports: Collection[int], found: dict[str, Listener]) -> bool:
    """Add the dump's listening sockets on ``ports`` to ``found``; False: an error."""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return False
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return True
            if kind == _NLMSG_ERROR or length < _NLMSG_HEADER.size:
                return False
            body = offset + _NLMSG_HEADER.size
            (port,) = _SOURCE_PORT.unpack_from(data, body + _SOURCE_PORT_AT)
            if port in ports:
                (inode,) = _INODE.unpack_from(data, body + _INODE_AT)
                raw = data[body + _SOURCE_ADDRESS_AT : body + _SOURCE_ADDRESS_AT + 16]
                family = data[body]
                packed = raw[:4] if family == socket.AF_INET else raw
                found[str(inode)] = (port, str(ipaddress.ip_address(packed)))
            offset += (length + 3) & ~3


def _listening_in_proc(ports: Collection[int], proc: Path) -> dict[str, Listener]:
    """:func:`_listening_inodes` from ``proc/net/tcp`` and ``tcp6``."""
    found: dict[str, Listener] = {}
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text(encoding="ascii", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            # Most lines of a busy host are connections, not listeners: the state column
            # is the only field that can read `` 0A `` (the others are hex addresses
            # joined by colons, or decimal), so a line without it is skipped unsplit.
            if _LISTEN_FIELD not in line:
                continue
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            try:
                hexed, port_hex = fields[1].rsplit(":", 1)
                port = int(port_hex, 16)
                # The address is in host order, 32 bits at a time (little-endian here).
                words = bytes.fromhex(hexed)
                packed = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
                address = str(ipaddress.ip_address(packed))
            except (IndexError, ValueError):
                continue
            if port in ports:
                found[fields[9]] = (port, address)
    return found


def port_holders(
    ports: Collection[int], proc: Path = _PROC, *, host: str | None = None
) -> dict[int, list[PortHolder]]:
    """For each of ``ports`` that some socket listens on, the processes holding it;
    with ``host``, only sockets whose address overlaps it (the same address, or either
    one every address): a port held on another address of the host is free here."""
    wanted = set(ports)
    inodes = _listening_inodes(wanted, proc)
    if host is not None:
        inodes = {i: held for i, held in inodes.items() if overlaps(host, held[1])}
    if not inodes:
        return {}
    holders: dict[int, list[PortHolder]] = {}
    seen: set[tuple[int, int]] = set()
    try:
        pids = [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        # Paths as text: a Path joined per descriptor cost more than reading its link.
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if not target.startswith("socket:["):
                continue
            held = inodes.get(target[8:-1])
            if held is None or (pid, held[0]) in seen:
                continue
            port, address = held
            seen.add((pid, port))
            holders.setdefault(port, []).append(PortHolder(port, pid, _command(proc, pid), address))
    for port, address in set(inodes.values()):
        if port not in holders:
            holders[port] = [PortHolder(port, None, address=address)]
    return holders


def overlaps(host: str, address: str) -> bool:
    """Whether a socket listening on ``address`` takes connections meant for ``host``
    (a name that is not an address overlaps everything: it may resolve to any)."""
    try:
        ours = ipaddress.ip_address(host.strip("[]"))
        theirs = ipaddress.ip_address(address)
    except ValueError:
        return True
    if ours.is_unspecified or theirs.is_unspecified:
        return True
    ours = getattr(ours, "ipv4_mapped", None) or ours
    theirs = getattr(theirs, "ipv4_mapped", None) or theirs
    return ours == theirs


def _command(proc: Path, pid: int) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    # One line: an argument may hold newlines (``python3 -c`` with a script).
    text = " ".join(raw.decode("utf-8", "replace").replace("\0", " ").split())
    return text if len(text) <= 120 else text[:117] + "..."


def descends_from(pid: int, ancestor: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (its load-balancer
    workers, say)."""
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        parent = _parent(proc, pid)
        if parent is None:
            return False
        pid, seen = parent, seen + 1
    return pid == ancestor


#: Where a state directory's data planes write their pid files (relative to the state
#: directory): the built-in proxy's coordinator (``ProxyPaths.pid``) and HAProxy's master
#: (``HAProxyMaster.pid_path`` of ``STATE/haproxy``). Named here, a light module, so the
#: plan can tell them from other programs without importing the data plane.
PROXY_PID_FILE = Path("proxy") / "proxy.pid"
HAPROXY_PID_FILE = Path("haproxy") / "haproxy.pid"


def own_data_plane(state: Path, proc: Path = _PROC) -> list[int]:
    """The processes serving ``state``'s endpoints (their descendants, the workers, are
    theirs too: :func:`descends_from`): the built-in proxy's coordinator, its socket
    keeper (the coordinator's parent, a fork running the same command line), and
    HAProxy's master. A pid file whose process is gone, or runs another program (a pid
    reused after a ``kill -9``), names nothing."""
    owners: list[int] = []
    coordinator = read_pid(state / PROXY_PID_FILE)
    if coordinator is not None:
        command = _command(proc, coordinator)
        if "gitorch" in command:
            owners.append(coordinator)
            keeper = _parent(proc, coordinator)
            if keeper is not None and keeper > 1 and _command(proc, keeper) == command:
                owners.append(keeper)
    master = read_pid(state / HAPROXY_PID_FILE)
    if master is not None and "haproxy" in _command(proc, master):
        owners.append(master)
    return owners


def read_pid(path: Path) -> int | None:
    """The pid a pid file names (its first word), None when absent or not a number."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return None
    return int(first[0]) if first and first[0].isdigit() else None


def _parent(proc: Path, pid: int) -> int | None:
    try:
        status = (proc / str(pid) / "status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    parent = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")), "")
    return int(parent) if parent.isdigit() else None

"""Who holds a listening port (gitorch/traffic/holders.py), against real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from listen_ports import free_port

from gitorch.traffic.holders import (
    _listening_by_netlink,
    _listening_in_proc,
    descends_from,
    overlaps,
    port_holders,
)


def test_a_listening_socket_of_this_process_is_found() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        holders = port_holders([port])
    assert [h.pid for h in holders[port]] == [os.getpid()]
    assert "python" in holders[port][0].command


def test_a_free_port_has_no_holder_and_a_child_descends_from_its_parent() -> None:
    assert port_holders([free_port()]) == {}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert descends_from(child.pid, os.getpid())
        assert not descends_from(os.getpid(), child.pid)
    finally:
        child.kill()
        child.wait()


def test_netlink_and_proc_net_tcp_find_the_same_listening_sockets() -> None:
    """The kernel's socket diagnostics (used) and /proc/net/tcp{,6} (the fallback) agree:
    listeners on IPv4 and IPv6 found, with their inodes; a connected socket is not one."""
    v4, v6, connected = free_port(), free_port(), free_port()
    with (
        socket.socket() as four,
        socket.socket(socket.AF_INET6) as six,
        socket.socket() as server,
        socket.socket() as client,
    ):
        four.bind(("127.0.0.1", v4))
        four.listen(1)
        six.bind(("::1", v6))
        six.listen(1)
        server.bind(("127.0.0.1", connected))
        server.listen(1)
        client.connect(("127.0.0.1", connected))
        accepted, _ = server.accept()
        with accepted:
            ports = {v4, v6, connected}
            by_netlink = _listening_by_netlink(ports)
            by_proc = _listening_in_proc(ports, Path("/proc"))
            listeners = (
                (four, v4, "127.0.0.1"),
                (six, v6, "::1"),
                (server, connected, "127.0.0.1"),
            )
            # Only the listening one of the three sockets on ``connected`` counts.
            inodes = {str(os.fstat(s.fileno()).st_ino): (port, a) for s, port, a in listeners}
    assert by_proc == inodes
    assert by_netlink == by_proc


def test_a_holder_whose_arguments_hold_newlines_is_named_on_one_line() -> None:
    port = free_port()
    script = f"import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\n"
    script += "s.listen(1)\nprint('up', flush=True)\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        (holder,) = port_holders([port])[port]
    finally:
        child.kill()
        child.wait()
    assert holder.pid == child.pid
    assert "\n" not in holder.describe()
    assert "-c import socket, time s = socket.socket()" in holder.command


def test_a_port_held_on_another_address_is_free_on_this_one() -> None:
    """Two proxies of one host on two addresses (127.0.0.1 and 127.0.0.2): one's port does
    not stand in the other's way; the same address, or a wildcard, does."""
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen(1)
        assert port_holders([port], host="127.0.0.2") == {}
        (same,) = port_holders([port], host="127.0.0.1")[port]
        assert same.pid == os.getpid() and same.address == "127.0.0.1"
        assert port in port_holders([port], host="0.0.0.0")
        assert port in port_holders([port])  # no address: any holder


@pytest.mark.parametrize(
    ("host", "address", "expected"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.2", "127.0.0.1", False),
        ("0.0.0.0", "127.0.0.1", True),
        ("127.0.0.1", "0.0.0.0", True),
        ("127.0.0.1", "::", True),
        ("::1", "127.0.0.1", False),
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("localhost", "10.0.0.1", True),  # a name may resolve to any address
    ],
)
def test_which_addresses_overlap(host: str, address: str, expected: bool) -> None:
    assert overlaps(host, address) is expected

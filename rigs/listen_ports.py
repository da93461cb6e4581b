"""Ports for the tests' listeners, picked outside the kernel's ephemeral port range.

``bind(("127.0.0.1", 0))`` returns an ephemeral port, free at that moment only: the kernel
may later hand the same port to an outgoing connection as its local port (probes, pooled
backend connections, load clients), or to a process-driver replica (which is given a
port the same way), and the test that listens on it then fails with "address already in
use". Ports below that range are never handed out by the kernel by itself.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: First port tried; the top is just below the ephemeral range and gitorch's own
#: DEFAULT_PORT_RANGE (30000-32767), whichever starts first.
LOW = 10000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_given: set[int] = set()
_random = random.SystemRandom()


def _high() -> int:
    try:
        ephemeral_low = int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return min(ephemeral_low, 30000) - 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this test process has
    not handed out before, outside the ephemeral range (see the module docstring)."""
    high = _high()
    if high - LOW < 1000:
        raise RuntimeError(f"no room for test ports below the ephemeral range ({LOW}..{high})")
    for _ in range(500):
        port = _random.randint(LOW, high)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port found in {LOW}..{high}")

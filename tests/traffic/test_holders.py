"""Who holds a listening port (gitorch/traffic/holders.py), against real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from listen_ports import free_port

from gitorch.traffic.holders import descends_from, port_holders


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

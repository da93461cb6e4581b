"""Remote engines on the rig: a node refused at the handshake (an ssh host key not in
its known hosts, a TLS certificate its CA did not sign) says so on every pass and leaves
nothing open behind. paramiko kept the transport of a refused ssh handshake, a thread and
a socket, for good: one more of each per pass, until sshd's MaxStartups refused the
host's good nodes too (their CLI said "Error reading SSH protocol banner")."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hosts_helpers import Rig

from gitorch.runtime import open_runtime
from gitorch.runtime.base import EngineAccess

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_refused_handshake_says_so_and_leaves_nothing_open(rig: Rig, tmp_path: Path) -> None:
    assert rig.ssh is not None and rig.tls is not None
    # Known hosts that hold another key for the ssh host (the client's own public key).
    kind, key = Path(f"{rig.ssh.identity}.pub").read_text().split()[:2]
    stranger = tmp_path / "known_hosts"
    stranger.write_text(f"{rig.ssh.address} {kind} {key}\n")
    runtimes = {
        "ssh": open_runtime(
            "stranger",
            "docker",
            endpoint=rig.ssh.endpoint,
            address=rig.ssh.address,
            access=EngineAccess(
                identity_file=str(rig.ssh.identity), known_hosts_file=str(stranger)
            ),
        ),
        "tls": open_runtime(
            "wrong-ca",
            "docker",
            endpoint=rig.hosts[0].tcp_endpoint,
            address=rig.hosts[0].address,
            access=EngineAccess(
                tls=True,
                ca_cert=str(rig.tls.wrong_ca),
                client_cert=str(rig.tls.cert),
                client_key=str(rig.tls.key),
            ),
        ),
    }
    expected = {"ssh": "node stranger: ", "tls": "node wrong-ca: "}
    for runtime in runtimes.values():  # the first attempt may start pools, loggers
        assert not runtime.node_info().ready
    threads, fds = threading.active_count(), _open_fds()
    for _ in range(15):  # fifteen passes
        for name, runtime in runtimes.items():
            info = runtime.node_info()
            assert not info.ready and info.message.startswith(expected[name]), info.message
    assert "host key does not match known hosts" in runtimes["ssh"].node_info().message
    assert "runtime.tls.caCert" in runtimes["tls"].node_info().message
    deadline = time.monotonic() + 10  # closed transports' threads end on their own
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert _open_fds() <= fds, os.listdir("/proc/self/fd")

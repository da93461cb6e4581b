"""How a failure to reach a node's engine is worded (no engine needed)."""

from __future__ import annotations

import errno

import paramiko

from gitorch.errors import EngineUnavailable
from gitorch.runtime.docker import _engine_error


def test_an_ssh_host_cut_off_says_no_route_not_errno_none() -> None:
    # What paramiko raised for the rig's ssh host with its link down.
    cut = paramiko.ssh_exception.NoValidConnectionsError(
        {("198.18.7.4", 22): OSError(errno.EHOSTUNREACH, "No route to host")}
    )
    error = _engine_error("h3", "ssh://root@198.18.7.4", cut)
    assert isinstance(error, EngineUnavailable)
    assert error.message == (
        "node h3: Docker engine at ssh://root@198.18.7.4 is not answering: "
        "no route to host (the host is down or its address is wrong)"
    )


def test_an_ssh_port_refused_says_so() -> None:
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("198.18.7.4", 22): ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")}
    )
    error = _engine_error("h3", "ssh://root@198.18.7.4", refused)
    assert "connection refused (no engine listens there)" in error.message
    assert "Errno None" not in error.message

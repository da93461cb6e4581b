"""Stopping the data plane a test's daemons left behind.

The data plane outlives ``gitorch daemon`` by design (``gitorch proxy``, or HAProxy kept
running for the next daemon to adopt), so every test that starts a daemon stops it
explicitly at teardown, as a user would with ``gitorch proxy stop``; a proxy or HAProxy
whose control socket is gone (a test killed it half way) is found by its command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from gitorch.traffic.haproxy.process import HAProxyMaster, process_alive
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call


def stop_data_plane(state: Path, timeout: float = 20.0) -> None:
    """Stop the built-in proxy and HAProxy serving ``state`` (whichever run)."""
    state = Path(state).resolve()
    paths = ProxyPaths.of(state)
    with contextlib.suppress(ProxyUnavailable):
        pid = int(call(paths.socket, {"op": "hello"}, 5.0).get("pid", 0))
        call(paths.socket, {"op": "stop"}, 5.0)
        deadline = time.monotonic() + timeout
        while pid and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    master = HAProxyMaster(state / "haproxy")
    if master.adopt():
        master.stop()
    # A proxy's socket keeper forks a new coordinator when its coordinator dies: kill
    # until none is left (keepers come first in /proc's order, but a fork may race).
    for _ in range(50):
        left = processes_naming(state)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def kill_proxy_tree(state: Path) -> int:
    """SIGKILL the whole ``gitorch proxy`` serving ``state`` (its socket keeper first,
    then the coordinator: its workers exit with it), as a crash of the host's service
    would; the coordinator's pid."""
    about = call(ProxyPaths.of(Path(state).resolve()).socket, {"op": "hello"}, 5.0)
    keeper, pid = about.get("keeper"), int(about["pid"])
    if keeper:
        os.kill(int(keeper), signal.SIGKILL)
        while process_alive(int(keeper)):
            time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return pid


def processes_naming(state: Path) -> list[int]:
    """Live ``gitorch proxy`` and ``haproxy`` processes whose command line names ``state``
    (a proxy's workers exit with it: their pipe to it closes)."""
    marker = str(Path(state).resolve()).encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = any(marker in arg for arg in argv)
        # `gitorch proxy run`, or `python -m gitorch.traffic.proxy run` (the daemon's)
        kind = argv[0].endswith(b"haproxy") or any(
            arg in (b"proxy", b"gitorch.traffic.proxy") for arg in argv
        )
        if named and kind and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found

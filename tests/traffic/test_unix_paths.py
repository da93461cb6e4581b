"""Data planes in a state directory deep in the file system (gitorch/traffic/unix_paths.py):
their unix sockets move to a private short directory, the same one every time, and
they start and serve (real HAProxy, real ``gitorch proxy``). Before, HAProxy's master
exited at start ("socket path ... too long (max 97)") and no route was ever served."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from listen_ports import free_port
from traffic_helpers import Apps, get, route, table, wait_until

from gitorch.errors import ConfigError
from gitorch.traffic.haproxy import HAProxyDataPlane
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyPaths
from gitorch.traffic.unix_paths import HAPROXY_MAX, KERNEL_MAX, fitting, make_room, release

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / ("a-state-directory-deep-in-a-file-system-" * 3) / "state"
    folder.mkdir(parents=True)
    assert len(str(folder)) > KERNEL_MAX
    yield folder
    for name in ("haproxy", "proxy"):
        shutil.rmtree(fitting(folder / name / "x.sock").parent, ignore_errors=True)


def test_a_path_that_fits_stays_and_a_long_one_moves_to_a_private_folder(deep: Path) -> None:
    short = Path("/run/x/admin.sock")
    assert fitting(short) == short
    moved = fitting(deep / "haproxy" / "master.sock", HAPROXY_MAX)
    assert moved.name == "master.sock" and len(str(moved)) <= HAPROXY_MAX
    assert moved == fitting(deep / "haproxy" / "master.sock", HAPROXY_MAX), "the same each time"
    assert moved.parent != fitting(deep / "proxy" / "control.sock").parent
    assert not moved.parent.exists(), "computing a path makes nothing (status, clients)"
    make_room(moved)
    found = moved.parent.stat()
    assert stat.S_IMODE(found.st_mode) == 0o700 and found.st_uid == os.getuid()
    # Someone else's (or an open) folder there is refused, not used.
    os.chmod(moved.parent, 0o777)
    try:
        with pytest.raises(ConfigError, match="not a private directory"):
            fitting(deep / "haproxy" / "master.sock", HAPROXY_MAX)
    finally:
        os.chmod(moved.parent, 0o700)
    moved.touch()
    release(moved)
    assert moved.parent.exists(), "a folder that still holds a socket stays"
    moved.unlink()
    release(moved)
    assert not moved.parent.exists(), "the last socket gone, its folder goes"
    release(short)  # a socket in its own place: nothing to remove


def test_haproxy_serves_from_a_deep_state_directory(deep: Path, apps: Apps) -> None:
    app = apps.start()
    plane = HAProxyDataPlane(deep / "haproxy", slots_per_version=2)
    try:
        port = free_port()
        plane.apply(table(route(port, [app.backend])))
        status, body, _ = get(port)
        assert status == 200 and app.id.encode() in body, body
    finally:
        plane.close()
    plane.stop()
    assert not plane.master_sock.parent.exists(), "a stopped HAProxy leaves no folder in /tmp"


def test_the_proxy_serves_from_a_deep_state_directory(deep: Path, apps: Apps) -> None:
    app = apps.start()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gitorch.traffic.proxy", "run", "--state", str(deep),
         "--workers", "1", "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        socket_path = ProxyPaths.of(deep).socket
        assert len(str(socket_path)) <= KERNEL_MAX
        wait_until(socket_path.exists, 30, "the proxy's control socket")
        port = free_port()
        ProxyDataPlane(deep).apply(table(route(port, [app.backend])))
        status, body, _ = get(port)
        assert status == 200 and app.id.encode() in body, body
    finally:
        proc.terminate()
        proc.wait(30)
    assert not socket_path.parent.exists(), "a stopped proxy leaves no folder in /tmp"

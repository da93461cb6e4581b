"""A state directory's own data plane is not "another program" holding its ports.

The built-in proxy outlives the daemon and is no child of it, and HAProxy is kept running
likewise: `gitorch plan` on a cluster whose daemon serves its endpoints warned that every
expose port was "held by" the proxy's keeper, coordinator and workers (found by a
walkthrough). Real detached proxy, real HAProxy, real listeners; the plan as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_plane_helpers import stop_data_plane
from listen_ports import free_port
from reconciler_helpers import DaemonProc, commit, init_repo
from traffic_helpers import Apps, get, route, table

from gitorch.state import StateStore
from gitorch.traffic.haproxy import HAProxyDataPlane
from gitorch.traffic.haproxy.process import HAProxyMaster
from gitorch.traffic.holders import (
    HAPROXY_PID_FILE,
    PROXY_PID_FILE,
    descends_from,
    own_data_plane,
    port_holders,
)
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyPaths


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    path.mkdir()
    try:
        yield path
    finally:
        stop_data_plane(path)


def owned(state: Path, port: int) -> bool:
    """Every process holding ``port`` is (or descends from) ``state``'s data plane."""
    holders = port_holders([port]).get(port, [])
    owners = own_data_plane(state)
    return bool(holders) and all(
        h.pid is not None and any(descends_from(h.pid, o) for o in owners) for h in holders
    )


def test_the_pid_files_are_where_the_data_planes_write_them(tmp_path: Path) -> None:
    assert ProxyPaths.of(tmp_path).pid == tmp_path / PROXY_PID_FILE
    assert HAProxyMaster(tmp_path / "haproxy").pid_path == tmp_path / HAPROXY_PID_FILE


def test_the_proxy_and_haproxy_are_the_states_own_and_a_listener_is_not(
    state: Path, apps: Apps
) -> None:
    assert own_data_plane(state) == []  # nothing runs, nothing is named
    app = apps.start("ka")
    builtin, haproxy, foreign = free_port(), free_port(), free_port()
    ProxyDataPlane(state, workers=2).apply(table(route(builtin, [app.backend])))
    assert get(builtin)[0] == 200
    # The keeper, the coordinator and both workers hold the port: all of them the state's.
    assert len(port_holders([builtin])[builtin]) >= 3
    assert owned(state, builtin)

    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install -y haproxy)"
    plane = HAProxyDataPlane(state / "haproxy", keep_running=True)
    plane.apply(table(route(haproxy, [app.backend])))
    plane.close()  # kept running, as a daemon leaves it
    assert get(haproxy)[0] == 200
    assert owned(state, haproxy)

    with socket.socket() as other:
        other.bind(("127.0.0.1", foreign))
        other.listen(1)
        assert not owned(state, foreign)
    # Another state directory's data plane is not this one's.
    assert not owned(state.parent / "elsewhere", builtin)


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_")}


def _plan(repo: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``gitorch plan`` of ``repo`` against ``state``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gitorch", "plan", "--runtime", "process"]
        + ["--repo", str(repo), "--state", str(state)],
        env={**_cli_env(), "NO_COLOR": "1", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_plan_warns_of_other_programs_on_expose_ports_not_of_its_own_proxy(
    state: Path, apps: Apps, tmp_path: Path
) -> None:
    app = apps.start("ka")
    served, taken = free_port(), free_port()
    ProxyDataPlane(state, workers=2).apply(table(route(served, [app.backend])))
    repo = tmp_path / "repo"
    init_repo(repo)
    manifests = "---\n".join(
        f"apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec:\n  command: [sleep, '60']\n  ports: [{{name: http, containerPort: 8080}}]\n"
        f"  expose: {{port: {port}, targetPort: http}}\n"
        for name, port in (("served", served), ("taken", taken))
    )
    commit(repo, {"app.yaml": manifests}, "two services")
    with socket.socket() as other:
        other.bind(("127.0.0.1", taken))
        other.listen(1)
        done = _plan(repo, state)
    assert done.returncode == 2, done.stdout + done.stderr
    warnings = [line for line in done.stdout.splitlines() if "is held by" in line]
    assert len(warnings) == 1, done.stdout
    assert f"port {taken} of taken is held by pid {os.getpid()}" in warnings[0]

    # Status without a daemon says the endpoints are served (by this proxy).
    StateStore(state).close()
    status = subprocess.run(
        [sys.executable, "-m", "gitorch", "status", "--format", "json", "--state", str(state)],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    plane = json.loads(status.stdout)["controlPlane"]
    assert plane["daemon"] is None and plane["dataPlane"] is True, status.stderr


def test_plan_names_only_ports_held_on_the_address_its_daemon_serves(
    state: Path, tmp_path: Path
) -> None:
    """The daemon's load balancer on 127.0.0.2 (``--lb-host``): a port another program
    holds on 127.0.0.1 is free there, one held on 127.0.0.2 is in the way. The plan read
    the port alone and named both."""
    free_here, clash = free_port(), free_port()
    repo = tmp_path / "repo"
    init_repo(repo)
    manifests = "---\n".join(
        f"apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec:\n  command: [sleep, '60']\n  replicas: 0\n"
        f"  ports: [{{name: http, containerPort: 8080}}]\n"
        f"  expose: {{port: {port}, targetPort: http}}\n"
        for name, port in (("elsewhere", free_here), ("clash", clash))
    )
    commit(repo, {"app.yaml": manifests}, "two services")
    with socket.socket() as on_one, socket.socket() as on_two:
        on_one.bind(("127.0.0.1", free_here))
        on_one.listen(1)
        on_two.bind(("127.0.0.2", clash))
        on_two.listen(1)
        daemon = DaemonProc(str(repo), state, "process", extra=("--lb-host", "127.0.0.2"))
        try:
            written = json.loads((state / "daemon.json").read_text(encoding="utf-8"))
            assert written["lbHost"] == "127.0.0.2"
            done = _plan(repo, state)
        finally:
            daemon.stop()
    # (the daemon's own pass says the same of clash, in the plan's next-pass lines)
    warnings = [line for line in done.stdout.splitlines() if line.strip().startswith("! port")]
    assert len(warnings) == 1, done.stdout + done.stderr
    assert f"port {clash} of clash is held by pid {os.getpid()}" in warnings[0]

"""Daemons on two hosts of one etcd namespace: every host serves the leader's table.

Each daemon here has its own runtime directory and its own load-balancer address (as
daemons on two hosts do): the leader drives its host's proxy, and the standby's host
follows: it serves the same routes from the table the leader stores in etcd
(apply/followers.py), through a rolling update, without one failed request, and status
says so. Before, a standby opened no data plane: its host served nothing, and an old
leader's host kept its last table.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from ha_helpers import HAWorld, role_of, status_of
from reconciler_helpers import (
    DaemonProc,
    LoadClient,
    commit,
    converged,
    gitorch,
    process_service,
    wait_for,
)

from gitorch.processes import process_alive

REPLICAS = 3
CONVERGE = 60.0
OTHER_HOST = "127.0.0.2"  # the standby's load-balancer address: its "host"


def _service(world: HAWorld, version: str) -> str:
    # Slow answers: the old replicas have requests in flight through both hosts when
    # they leave, which both hosts' drains must wait for.
    return process_service(
        "api", port=world.port, version=version, replicas=REPLICAS, env={"SLOW_MS": "100"}
    )


def _v1_led_by_alpha(
    ha: HAWorld, *beta_args: str, runtime: Path | None = None
) -> tuple[str, DaemonProc, DaemonProc]:
    """v1 converged with alpha leading and beta standing by (started with ``beta_args``,
    on ``runtime``): v1's sha, alpha, beta."""
    sha = commit(ha.repo, {"api.yaml": _service(ha, "1")}, "api v1")
    alpha = ha.start("alpha")
    wait_for("alpha leading", lambda: role_of(alpha) == "leader", 15, describe=alpha.log_tail)
    beta = ha.start("beta", *beta_args, runtime=runtime)
    leader, (standby,) = ha.one_leader()
    assert leader is alpha and standby is beta
    wait_for(
        "v1 converged",
        lambda: converged(alpha.service("api"), sha, REPLICAS),
        CONVERGE,
        describe=alpha.log_tail,
    )
    return sha, alpha, beta


def _roll_v2(ha: HAWorld, leader: DaemonProc, load: LoadClient) -> None:
    """Commit api v2 and wait until ``leader`` converged on it and ``load`` got answers
    after that."""
    sha2 = commit(ha.repo, {"api.yaml": _service(ha, "2")}, "api v2")
    wait_for(
        "v2 converged",
        lambda: converged(leader.service("api"), sha2, REPLICAS),
        CONVERGE,
        describe=leader.log_tail,
    )
    settled = load.total
    wait_for("load after the rollout", lambda: load.total > settled + 50, 15)


def _metrics(daemon: DaemonProc) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _tables(doc: dict[str, Any] | None) -> dict[str, str]:
    """How each member serves the table, from a status document ({} without one)."""
    if doc is None:
        return {}
    return {m["name"]: m["table"] for m in doc["controlPlane"]["members"]}


def _answer(host: str, port: int) -> str | None:
    """The version ``host:port`` answers with (None: no answer)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except OSError:
        return None
    finally:
        conn.close()
    if response.status != 200:
        return None
    found = re.search(r"version=(\S+)", body)
    return found.group(1) if found else None


def test_a_standby_on_another_host_serves_the_leaders_table_through_a_rollout(
    ha: HAWorld,
) -> None:
    _, alpha, beta = _v1_led_by_alpha(ha, "--lb-host", OTHER_HOST, runtime=ha.root / "run-beta")
    # The standby's host answers for api, from the leader's replicas.
    wait_for(
        "the standby's host serving v1",
        lambda: _answer(OTHER_HOST, ha.port) == "1",
        15,
        describe=beta.log_tail,
    )
    # Both "hosts" are this machine: beta says its runtime directory differs from alpha's.
    assert "daemons of one host share one runtime directory" in beta.log_path.read_text()
    # The follower acknowledges after it has drained what the table removes: serving v1
    # comes a moment before status says "follows".
    wait_for(
        "status naming beta a follower",
        lambda: _tables(status_of(beta)) == {"alpha": "drives", "beta": "follows"},
        10,
        describe=lambda: str(status_of(beta)),
    )
    # ... and the metrics: who leads, how each host serves the table.
    for daemon, leading in ((alpha, 1), (beta, 0)):
        text = _metrics(daemon)
        assert f"gitorch_leading {leading}.0" in text, text
        assert (
            'gitorch_control_plane_member{member="beta",role="standby",table="follows"} 1.0' in text
        ), text

    with (
        LoadClient(ha.port, host=OTHER_HOST, threads=4) as far,
        LoadClient(ha.port, threads=2) as near,
    ):
        wait_for("load flowing on both hosts", lambda: far.total > 50 and near.total > 20, 15)
        _roll_v2(ha, alpha, far)
        far_versions_after = dict(far.versions)
    assert far.failures == [], (len(far.failures), far.failures[:10], far.total)
    assert near.failures == [], (len(near.failures), near.failures[:10], near.total)
    assert far_versions_after.get("1", 0) > 0 and far_versions_after.get("2", 0) > 0, far.versions
    assert _answer(OTHER_HOST, ha.port) == "2"
    # Only the leader ran replicas; the standby's host took every table, none late.
    assert "has not taken the routing table" not in alpha.log_tail(), alpha.log_tail()
    # `gitorch status` read from etcd says the same.
    where = ("--state", ha.url, "--runtime-dir", str(ha.runtime))

    def tables_read_from_etcd() -> dict[str, str]:
        as_json = gitorch("status", *where, "--format", "json", cwd=ha.root)
        assert as_json.code == 0, as_json.stderr
        return _tables(as_json.json())

    wait_for(
        "status read from etcd naming beta a follower",
        lambda: tables_read_from_etcd() == {"alpha": "drives", "beta": "follows"},
        10,
        interval=0.5,
        describe=lambda: str(tables_read_from_etcd()),
    )


def test_a_standby_sharing_the_leaders_runtime_directory_leaves_its_proxy_alone(
    ha: HAWorld,
) -> None:
    _, _, beta = _v1_led_by_alpha(ha)
    wait_for(
        "status naming beta's share",
        lambda: _tables(status_of(beta)) == {"alpha": "drives", "beta": "shares"},
        10,
    )


def _members(doc: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """Each member's (role, table state), from a status document ({} without one)."""
    if doc is None:
        return {}
    return {m["name"]: (m["role"], m["table"]) for m in doc["controlPlane"]["members"]}


def _stand_in_pids(runtime: Path, daemon: str) -> list[int]:
    """The stand-in processes of ``daemon`` that say they serve ``runtime`` and still run."""
    found = []
    for record in (runtime / "stand-ins").glob(f"{daemon}.json"):
        pid = int(json.loads(record.read_text())["pid"])
        if process_alive(pid):
            found.append(pid)
    return found


def test_a_host_whose_daemon_was_killed_follows_the_leader_through_its_stand_in(
    ha: HAWorld,
) -> None:
    beta_runtime = ha.root / "run-beta"
    beta_args = ("--lb-host", OTHER_HOST)
    _, alpha, beta = _v1_led_by_alpha(ha, *beta_args, runtime=beta_runtime)
    wait_for("the standby's host serving v1", lambda: _answer(OTHER_HOST, ha.port) == "1", 15)
    wait_for(
        "status naming beta a follower",
        lambda: _tables(status_of(alpha)) == {"alpha": "drives", "beta": "follows"},
        10,
    )
    # beta is killed: its host's proxy keeps serving, and its stand-in takes over the
    # following at once (beta's lease revoked, not left to expire).
    os.kill(beta.proc.pid, signal.SIGKILL)
    beta.proc.wait(10)
    wait_for(
        "beta's stand-in following in its place",
        lambda: (
            _members(status_of(alpha))
            == {"alpha": ("leader", "drives"), "beta.stand-in": ("stand-in", "follows")}
        ),
        ha.ttl,
        describe=lambda: str(_members(status_of(alpha))),
    )
    shown = gitorch("status", "--state", ha.url, "--runtime-dir", str(ha.runtime), cwd=ha.root)
    text = " ".join(shown.stdout.split())  # (rich wraps at 80 columns)
    assert "daemon gone (its stand-in follows): beta" in text, shown.stdout
    # A rollout with beta gone: beta's host answers throughout, and ends on v2 (before,
    # it kept v1's table, whose replicas the rollout stopped).
    with LoadClient(ha.port, host=OTHER_HOST, threads=4) as far:
        wait_for("load flowing on beta's host", lambda: far.total > 50, 15)
        _roll_v2(ha, alpha, far)
    assert far.failures == [], (len(far.failures), far.failures[:10], far.total)
    assert far.versions.get("2", 0) > 0, far.versions
    assert _answer(OTHER_HOST, ha.port) == "2"
    assert "has not taken the routing table" not in alpha.log_tail(), alpha.log_tail()
    # beta back: its stand-in leaves before it campaigns, and beta follows itself.
    (stand_in,) = _stand_in_pids(beta_runtime, "beta")
    beta = ha.start("beta", *beta_args, runtime=beta_runtime)
    wait_for(
        "beta following again, no stand-in",
        lambda: (
            _members(status_of(alpha))
            == {"alpha": ("leader", "drives"), "beta": ("standby", "follows")}
        ),
        10,
        describe=lambda: str(_members(status_of(alpha))),
    )
    assert not process_alive(stand_in)
    assert "stand-in for daemon beta stopped" in beta.log_path.read_text()


def test_a_killed_leaders_stand_in_frees_the_leadership_before_its_lease_expires(
    ha: HAWorld,
) -> None:
    ha.ttl = 20.0  # the standby would wait this long for the killed leader's lease
    _, alpha, beta = _v1_led_by_alpha(ha)
    os.kill(alpha.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    alpha.proc.wait(10)
    wait_for("beta leading", lambda: role_of(beta) == "leader", ha.ttl, interval=0.05)
    took = time.monotonic() - killed_at
    assert took < ha.ttl / 2, took
    # alpha's stand-in left: beta serves the place they share.
    wait_for("alpha's stand-in gone", lambda: _stand_in_pids(ha.runtime, "alpha") == [], 10)
    assert _members(status_of(beta)) == {"beta": ("leader", "drives")}

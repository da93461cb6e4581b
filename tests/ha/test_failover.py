"""Two daemons, one etcd: exactly one leads; the other takes over a killed or paused one.

Issue 14, "What must hold": ``kill -9`` of the leader during a rolling update under load
and the other leads within the lease TTL + 2 s, finishes the rollout, and not one request
fails nor does the replica count ever exceed the plan's maxSurge; a leader paused
(SIGSTOP) past its lease is replaced, and once woken none of its writes land (read back
from etcd) and it steps down by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import time

from ha_helpers import Census, HAWorld, kill_leader_until_standby_leads, paused, role_of, status_of
from reconciler_helpers import (
    DaemonProc,
    LoadClient,
    commit,
    converged,
    gitorch,
    process_service,
    wait_for,
)

REPLICAS = 4
MAX_SURGE = 1  # process_service's rollingUpdate: maxSurge 1, maxUnavailable 0
CONVERGE = 60.0


def _service(world: HAWorld, version: str, slow_ms: int = 0) -> str:
    return process_service(
        "api",
        port=world.port,
        version=version,
        replicas=REPLICAS,
        env={"SLOW_MS": str(slow_ms)},
    )


def _two_daemons_at_v1(ha: HAWorld) -> tuple[str, DaemonProc, DaemonProc]:
    """v1 (slow answers, so drains have requests to wait for) converged under two
    daemons: its sha, the leader, the standby."""
    sha1 = commit(ha.repo, {"api.yaml": _service(ha, "1", slow_ms=150)}, "api v1")
    ha.start("alpha")
    ha.start("beta")
    leader, (standby,) = ha.one_leader()
    wait_for(
        "v1 converged",
        lambda: converged(leader.service("api"), sha1, REPLICAS),
        CONVERGE,
        describe=leader.log_tail,
    )
    return sha1, leader, standby


def _roll_to_v2(ha: HAWorld) -> str:
    """Commit v2 and return once the rollout is under way (a new replica runs, old ones
    are still there); the new commit's sha."""
    sha2 = commit(ha.repo, {"api.yaml": _service(ha, "2")}, "api v2")
    wait_for(
        "the rollout under way",
        lambda: any(i.labels.get("dev.gitorch.revision") == sha2 for i in ha.replicas()),
        30,
        interval=0.02,
    )
    return sha2


def test_two_daemons_one_leads_and_the_standby_serves_read_only(ha: HAWorld) -> None:
    sha = commit(ha.repo, {"api.yaml": _service(ha, "1")}, "api v1")
    ha.start("alpha")
    ha.start("beta")
    leader, (standby,) = ha.one_leader()
    wait_for(
        "v1 converged",
        lambda: converged(leader.service("api"), sha, REPLICAS),
        CONVERGE,
        describe=leader.log_tail,
    )
    # The standby shows the same cluster (from etcd and the shared runtime dir)...
    doc = status_of(standby)
    assert doc is not None
    assert doc["controlPlane"]["role"] == "standby"
    assert sorted(m["name"] for m in doc["controlPlane"]["members"]) == ["alpha", "beta"]
    (api,) = [s for s in doc["services"] if s["name"] == "api"]
    assert api["replicas"]["running"] == REPLICAS and api["revision"] == sha
    code, history = standby.request("GET", "/api/v1/history")
    assert code == 200 and history[0]["revision"] == sha
    code, plan = standby.request("GET", "/api/v1/plan")
    assert code == 200 and plan["summary"]["create"] == 0, plan
    # ...and refuses writes, naming the leader.
    code, body = standby.request("POST", "/api/v1/services/api/promote", b"{}")
    leader_name = doc["controlPlane"]["leader"]
    assert code == 503, body
    assert f"the leader is {leader_name} at http://127.0.0.1:{leader.port}" in body["error"]
    healthz = standby.request("GET", "/healthz")
    assert healthz[0] == 200, healthz
    # Nothing of the standby's reached the world: one proxy, the leader's replicas only.
    assert len(ha.replicas()) == REPLICAS
    # `gitorch status` without a daemon's address reads the same from etcd: who leads,
    # who stands by (text and JSON).
    where = ("--state", ha.url, "--runtime-dir", str(ha.runtime))
    text = gitorch("status", *where, cwd=ha.root)
    assert text.code == 0, text.stderr
    assert f"leader {leader_name}" in text.stdout, text.stdout
    (standby_name,) = {"alpha", "beta"} - {leader_name}
    assert standby_name in text.stdout and "standby" in text.stdout, text.stdout
    as_json = gitorch("status", *where, "--format", "json", cwd=ha.root)
    assert as_json.code == 0, as_json.stderr
    plane = as_json.json()["controlPlane"]
    assert plane["backend"] == "etcd" and plane["leader"] == leader_name, plane
    assert {m["name"]: m["role"] for m in plane["members"]} == {
        leader_name: "leader",
        standby_name: "standby",
    }
    assert all(e["ok"] for e in plane["etcd"]) and len(plane["etcd"]) == 3, plane["etcd"]


def test_kill_9_of_the_leader_mid_rollout_under_load(ha: HAWorld) -> None:
    sha1, leader, standby = _two_daemons_at_v1(ha)
    with Census(ha) as census, LoadClient(ha.port, threads=4) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        sha2 = _roll_to_v2(ha)
        took_over = kill_leader_until_standby_leads(leader, standby, ha.ttl)
        wait_for(
            "v2 converged under the new leader",
            lambda: converged(standby.service("api"), sha2, REPLICAS),
            CONVERGE,
            describe=lambda: str(standby.status()) + standby.log_tail(),
        )
        settled = load.total
        wait_for("load after the rollout", lambda: load.total > settled + 50, 10)
    assert took_over <= ha.ttl + 2, took_over
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)
    assert load.versions["1"] > 0 and load.versions["2"] > 0, load.versions
    assert census.samples > 100
    # In service at most REPLICAS + MAX_SURGE; a replica stopped to make room is
    # terminating and runs beside its replacement (Kubernetes' surge semantics).
    assert census.most <= REPLICAS + 2 * MAX_SURGE, census.worst
    # No replica duplicated or orphaned: exactly one per slot, all of v2.
    final = [i for i in ha.replicas() if str(i.state) == "running"]
    assert sorted(i.labels["dev.gitorch.replica"] for i in final) == [
        f"api-{n}" for n in range(1, REPLICAS + 1)
    ]
    assert {i.labels["dev.gitorch.revision"] for i in final} == {sha2}
    code, history = standby.request("GET", "/api/v1/history")
    assert code == 200
    by_sha = {h["revision"]: h["result"] for h in history}
    assert by_sha == {sha1: "succeeded", sha2: "succeeded"}, history


def test_a_paused_leader_is_fenced_and_steps_down(ha: HAWorld) -> None:
    ha.ttl = 8.0  # room for the checks below within the new leader's own lease
    sha1, old, new = _two_daemons_at_v1(ha)
    with LoadClient(ha.port, threads=2) as load:
        sha2 = _roll_to_v2(ha)
        # The leader freezes mid-rollout (a GC pause, a frozen VM) past its lease.
        os.kill(old.proc.pid, signal.SIGSTOP)
        try:
            wait_for(
                "the other daemon leading",
                lambda: role_of(new) == "leader",
                ha.ttl + 2,
                interval=0.05,
                describe=new.log_tail,
            )
            wait_for(
                "v2 converged under the new leader",
                lambda: converged(new.service("api"), sha2, REPLICAS),
                CONVERGE,
                describe=new.log_tail,
            )
            # Freeze the new leader, then wake the old one: whatever lands in etcd or
            # changes among the replicas now can only be the old leader's doing.
            with paused(new):
                keys_before = ha.data_keys()
                replicas_before = sorted(i.id for i in ha.replicas())
                os.kill(old.proc.pid, signal.SIGCONT)
                wait_for(
                    "the old leader stepping down",
                    lambda: role_of(old) in ("standby", "not acting"),
                    5,
                    interval=0.05,
                    describe=old.log_tail,
                )
                time.sleep(2.0)  # its loop runs on, as a standby
                keys_after = ha.data_keys()
                replicas_after = sorted(i.id for i in ha.replicas())
                doc = status_of(old)
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)
        wait_for("the new leader still leading", lambda: role_of(new) == "leader", 10)
        settled = load.total
        wait_for("load after", lambda: load.total > settled + 20, 10)
    changed = {
        k for k in keys_before.keys() | keys_after.keys() if keys_before.get(k) != keys_after.get(k)
    }
    assert changed == set(), f"the deposed leader wrote: {sorted(changed)}"
    assert replicas_after == replicas_before, "the deposed leader changed the replicas"
    new_name = next(name for name, d in ha.daemons.items() if d is new)
    assert doc is not None, "the woken daemon did not answer"
    assert doc["controlPlane"]["leader"] == new_name, doc["controlPlane"]
    assert doc["controlPlane"]["role"] != "leader"
    assert load.failures == [], (len(load.failures), load.failures[:10])
    assert converged(new.service("api"), sha2, REPLICAS)
    assert "lease expired" in old.log_tail(200) or "stopped acting" in old.log_tail(200)


def test_a_daemon_is_named_after_its_host_and_a_second_of_that_name_is_refused(
    ha: HAWorld,
) -> None:
    commit(ha.repo, {"api.yaml": _service(ha, "1")}, "api v1")
    first = DaemonProc(
        str(ha.repo), ha.runtime, "process", store_url=ha.url, extra=["--lease-ttl", "3"]
    )
    ha.daemons["first"] = first
    wait_for("it leads", lambda: role_of(first) == "leader", 15, describe=first.log_tail)
    doc = status_of(first)
    assert doc is not None
    host = socket.gethostname()
    assert doc["controlPlane"]["leader"] == host, doc["controlPlane"]
    assert [m["name"] for m in doc["controlPlane"]["members"]] == [host]
    second = DaemonProc(
        str(ha.repo), ha.runtime, "process", store_url=ha.url, extra=["--lease-ttl", "3"],
        wait=False,
    )  # fmt: skip
    ha.daemons["second"] = second
    assert second.proc.wait(30) != 0
    assert f"a gitorch daemon named {host} already runs" in second.log_tail(), second.log_tail()
    assert role_of(first) == "leader"

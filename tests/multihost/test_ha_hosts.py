"""Two daemons standing for two hosts, one etcd namespace, the rig's three engines as nodes:
both hosts' endpoints serve the leader's table (apply/followers.py), through a kill -9
of the leader and the rollout the new leader runs, and the old leader's host follows
the new leader once its daemon is back.

Each daemon has its own runtime directory and its own load-balancer address (alpha
127.0.0.1, beta 127.0.0.2), as daemons on two hosts have; the replicas run on the rig's
engines, which both daemons reach, so the new leader adopts them.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from etcd_helpers import EtcdCluster, new_namespace
from ha_helpers import role_of
from hosts_helpers import Rig
from listen_ports import free_port
from multihost_helpers import Fleet, Load, get, instance_of, service_yaml, wait_settled
from reconciler_helpers import DaemonProc, wait_for

from gitorch.state import StateStore
from gitorch.state.etcd.backend import EtcdBackend

#: The rig's engines are real Docker engines (never skipped: a missing part fails).
pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPLICAS = 3
TTL = 5.0
BETA_HOST = "127.0.0.2"


def _instances(daemon: DaemonProc) -> set[str]:
    svc: dict[str, Any] | None = daemon.service("shop")
    return {i["id"][:12] for i in svc["instances"]} if svc else set()


def _shop(port: int, version: str) -> str:
    text = service_yaml("shop", image="gitorch-example/api:1", port=port, replicas=REPLICAS)
    return text + f'  env: {{VERSION: "{version}"}}\n'


def test_both_hosts_serve_through_a_failover_and_the_old_one_follows_on_its_return(
    fleet: Fleet, rig: Rig, etcd_cluster: EtcdCluster
) -> None:
    port = free_port()
    url = etcd_cluster.url(new_namespace())
    fleet.commit({"nodes.yaml": fleet.nodes_yaml(), "shop.yaml": _shop(port, "1")}, "shop v1")
    on_etcd = ("--lease-ttl", f"{TTL:g}")
    alpha_run, beta_run = fleet.root / "run-alpha", fleet.root / "run-beta"
    alpha = fleet.daemon("--name", "alpha", *on_etcd, store_url=url, runtime=alpha_run)
    wait_for("alpha leading", lambda: role_of(alpha) == "leader", 20, describe=alpha.log_tail)
    with StateStore(url, readonly=True) as store:
        assert isinstance(store.backend, EtcdBackend)
        fleet.cluster = store.backend.cluster_name()
    beta = fleet.daemon(
        "--name", "beta", "--lb-host", BETA_HOST, *on_etcd, store_url=url, runtime=beta_run
    )
    wait_settled(alpha, "shop", REPLICAS, timeout=240)
    first = _instances(alpha)
    for host in ("127.0.0.1", BETA_HOST):
        wait_for(f"{host} answering", lambda host=host: get(host, port)[0] == 200, 30)

    with Load(port, host=BETA_HOST) as load:
        wait_for("load flowing", lambda: load.total > 50, 15)
        os.kill(alpha.proc.pid, signal.SIGKILL)
        alpha.proc.wait(10)
        wait_for("beta leading", lambda: role_of(beta) == "leader", TTL + 5, interval=0.1)
        # The new leader adopted the replicas (the same engines), and rolls v2 out.
        assert _instances(beta) == first
        fleet.commit({"shop.yaml": _shop(port, "2")}, "shop v2")
        wait_for(
            "v2 rolled out by beta",
            lambda: (
                (svc := beta.service("shop")) is not None
                and svc["rollout"]["phase"] == "Healthy"
                and not (_instances(beta) & first)
                and len(_instances(beta)) == REPLICAS
            ),
            240,
            describe=beta.log_tail,
        )
        settled = load.total
        wait_for("load after the rollout", lambda: load.total > settled + 50, 20)
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)
    second = _instances(beta)
    assert {i for i in load.instances if i in first} and {i for i in load.instances if i in second}

    # alpha's host kept its proxy, with the table of before the rollout; its daemon back
    # (a standby now), it takes beta's table: every answer there comes from v2's replicas.
    alpha_again = fleet.daemon("--name", "alpha", *on_etcd, store_url=url, runtime=alpha_run)
    wait_for("alpha standing by", lambda: role_of(alpha_again) == "standby", 30)

    def serves_v2_only() -> bool:
        answers = [get("127.0.0.1", port) for _ in range(9)]
        return all(code == 200 and instance_of(body) in second for code, body in answers)

    wait_for("alpha's host serving beta's table", serves_v2_only, 20, describe=alpha_again.log_tail)

"""Issue 17, item 3, "What must hold": replicas unschedulable on the existing node -> a
NodePool makes a node (a private Docker engine, through the shipped provider
examples/nodepool/local-engines), they run there; the load gone -> the node is drained and
deleted. Every decision in the audit log, /metrics and ``gitorch status``."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from local_engines_helpers import call_provider, delete_all, pool_yaml
from multinode_helpers import IMAGE, World, node_yaml, service_yaml, settled, where
from reconciler_helpers import (
    DaemonProc,
    LoadClient,
    commit,
    free_port,
    get_body,
    gitorch,
    wait_for,
)
from tls_certs import make_client_ca

SYNC = 1.0


def pool_daemon(world: World, *extra: str) -> DaemonProc:
    """The world's daemon, syncing pools every SYNC seconds (``extra``: more flags)."""
    daemon = DaemonProc(
        str(world.repo),
        world.state,
        "process",
        interval=2.0,
        resync=0.5,
        extra=("--node-grace", "3", "--autoscale-sync", str(SYNC), *extra),
    )
    world.daemons.append(daemon)
    return daemon


def pool_of(daemon: DaemonProc) -> dict[str, Any]:
    pools = {p["name"]: p for p in daemon.status().get("nodePools", [])}
    return pools.get("workers") or {"nodes": []}


def test_a_node_pool_makes_a_node_for_unschedulable_replicas_then_drains_and_deletes_it(
    world: World, port: int
) -> None:
    """The local node (one cpu) runs a filler (500m) and web-1 (400m); web-2 fits nowhere,
    so the pool makes a node for it. The filler leaves Git (the load is gone): web-2 fits
    on local again, its node is under-used for the window, drained (web-2 moves to local,
    the replacement ready before the old one stops: no failed request) and deleted."""
    engines = world.root / "engines"
    world.process_nodes = ["local"]
    filler = service_yaml("filler", port=free_port(), replicas=1, cpu="500m", memory="16Mi")
    web = service_yaml("web", port=port, replicas=1, cpu="400m", memory="16Mi")
    files = {
        "nodes.yaml": node_yaml("local", cpu="1", memory="1Gi"),
        "pool.yaml": pool_yaml(engines, images=(IMAGE,), up="2s", down="3s"),
        "filler.yaml": filler,
        "web.yaml": web,
    }
    commit(world.repo, files, "web and a filler on the local node, and a pool of workers")
    daemon = pool_daemon(world)
    try:
        wait_for("web and filler on local",
                 lambda: settled(daemon.service("web"), 1) and settled(daemon.service("filler"), 1),
                 40, describe=daemon.log_tail)  # fmt: skip
        assert pool_of(daemon)["nodes"] == []

        # 100m left on local: web-2 waits, and a node of the template (one cpu) takes it.
        two = service_yaml("web", port=port, replicas=2, cpu="400m", memory="16Mi")
        commit(world.repo, {"web.yaml": two}, "two web replicas")
        wait_for(
            "a pool node made, web-2 running there",
            lambda: (
                settled(daemon.service("web"), 2)
                and where(daemon.service("web")).get("web-2", "").startswith("workers-")
            ),
            120,
            interval=0.3,
            describe=daemon.log_tail,
        )
        made = where(daemon.service("web"))["web-2"]
        assert where(daemon.service("web"))["web-1"] == "local"
        pool = pool_of(daemon)
        assert [n["name"] for n in pool["nodes"]] == [made], pool
        assert pool["lastDecision"]["action"] == "create 1", pool
        assert "web-2 unschedulable" in pool["lastDecision"]["reason"], pool
        assert "a workers node (1 cpu, 1Gi) fits them" in pool["lastDecision"]["reason"]
        listed = call_provider(engines, "list", {"pool": "workers"})
        assert [n["name"] for n in listed] == [made]
        # It really runs in the private engine the provider made.
        names = subprocess.run(
            ["docker", "-H", listed[0]["endpoint"], "ps", "--format", "{{.Names}}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "web" in names, names
        nodes = {n["name"]: n for n in daemon.status()["nodes"]}
        assert nodes[made].get("pool") == "workers" and nodes[made]["ready"]
        # 40% requested there, under 50%: but web-2 fits nowhere else, so the node stays.
        time.sleep(3 * SYNC + 3)
        assert [n["name"] for n in pool_of(daemon)["nodes"]] == [made]

        # The load is gone: the filler leaves Git, web-2 fits on local; its node is
        # drained (web-2 moves) and deleted, with web answering all along.
        with LoadClient(port, threads=2) as load:
            wait_for("load flowing", lambda: load.ok > 20, 20)
            (world.repo / "filler.yaml").unlink()
            commit(world.repo, {}, "the filler is gone")
            wait_for(
                "the pool node drained and deleted",
                lambda: pool_of(daemon)["nodes"] == [],
                120,
                interval=0.5,
                describe=daemon.log_tail,
            )
            wait_for("web settled on local",
                     lambda: settled(daemon.service("web"), 2), 30)  # fmt: skip
            mark = load.ok
            wait_for("load after the drain", lambda: load.ok > mark + 20, 20)
        print(f"node pool drain: {load.ok} requests, {len(load.failures)} failed")
        assert load.failures == [], (len(load.failures), load.failures[:10])
        assert where(daemon.service("web")) == {"web-1": "local", "web-2": "local"}
        assert call_provider(engines, "list", {"pool": "workers"}) == []
        assert made not in {n["name"] for n in daemon.status()["nodes"]}

        events = gitorch("audit", "--state", str(world.state), "--format", "json",
                         cwd=world.root)  # fmt: skip
        assert events.code == 0, events.stderr
        by_kind = {e["kind"]: e for e in events.json()}
        for kind in ("nodepool.scaled-up", "nodepool.draining", "nodepool.scaled-down"):
            assert kind in by_kind, list(by_kind)
        assert "its replicas fit elsewhere" in by_kind["nodepool.draining"]["message"]
        code, metrics = daemon.request("GET", "/metrics")
        assert code == 200
        for action in ("create", "drain", "delete"):
            sample = f'gitorch_node_pool_decisions_total{{action="{action}",pool="workers"}} 1.0'
            assert sample in metrics, action
        assert 'gitorch_node_pool_nodes{kind="max",pool="workers"} 2.0' in metrics
        assert 'gitorch_node_pool_nodes{kind="current",pool="workers"} 0.0' in metrics
        text = gitorch("status", "--state", str(world.state), "--server",
                       f"http://127.0.0.1:{daemon.port}", cwd=world.root)  # fmt: skip
        assert "node pool workers: 0 node(s) (min 0, max 2)" in text.stdout, text.stdout
        assert "delete" in text.stdout, text.stdout
        # Every decision in `gitorch history` too, newest first, with why.
        shown = gitorch("history", "--scaling", "--state", str(world.state), "--format",
                        "json", cwd=world.root)  # fmt: skip
        assert shown.code == 0, shown.stderr
        decisions = [(d["kind"], d["object"]) for d in shown.json()]
        assert decisions == [
            ("nodepool.scaled-down", "NodePool/workers"),
            ("nodepool.draining", "NodePool/workers"),
            ("nodepool.scaled-up", "NodePool/workers"),
        ], decisions
        table = gitorch("history", "--state", str(world.state), cwd=world.root)
        assert "scaling decisions" in table.stdout, table.stdout
        assert "NodePool/workers  nodepool.draining" in table.stdout, table.stdout
    finally:
        daemon.stop()
        delete_all(engines, "workers")


def test_a_tls_pool_node_runs_replicas_and_is_spoken_to_over_tls_only(
    world: World, port: int
) -> None:
    """A pool whose template asks TLS (minNodes 1): the provider's engine serves only TLS
    with client certificates on tcp; the daemon (--secrets-dir holding the template's
    files) reaches it, runs web there (its nodeSelector wants the pool) and serves it.
    Without a client certificate the engine refuses: gitorch's calls were TLS ones."""
    engines = world.root / "engines"
    certs = make_client_ca(world.root / "secrets")
    world.process_nodes = ["local"]
    web = service_yaml("web", port=port, replicas=1, cpu="100m", memory="16Mi",
                       node_selector={"pool": "workers"})  # fmt: skip
    files = {
        "nodes.yaml": node_yaml("local", cpu="1", memory="1Gi"),
        "pool.yaml": pool_yaml(engines, min_nodes=1, images=(IMAGE,), tls_ca=certs.folder),
        "web.yaml": web,
    }
    commit(world.repo, files, "web on a TLS pool node")
    daemon = pool_daemon(world, "--secrets-dir", str(certs.folder))
    try:
        wait_for(
            "web running on the pool's node",
            lambda: (
                settled(daemon.service("web"), 1)
                and where(daemon.service("web")).get("web-1", "").startswith("workers-")
            ),
            120,
            interval=0.3,
            describe=daemon.log_tail,
        )
        [node] = pool_of(daemon)["nodes"]
        [listed] = call_provider(engines, "list", {"pool": "workers"})
        assert listed["endpoint"].startswith("tcp://127.0.0.1:"), listed
        assert get_body(port, "/") is not None  # served through the balancer

        shown = gitorch("nodes", "--state", str(world.state), "--secrets-dir", str(certs.folder),
                        "--format", "json", cwd=world.root)  # fmt: skip
        assert shown.code == 0, shown.stderr
        engine = next(n for n in shown.json()["nodes"] if n["name"] == node["name"])
        assert engine["condition"] == "Ready", engine
        assert engine["engine"]["transport"] == "tls (verified)", engine

        host = ["docker", "-H", listed["endpoint"]]
        plain = subprocess.run([*host, "ps"], capture_output=True, text=True, timeout=30,
                               check=False)  # fmt: skip
        assert plain.returncode != 0, plain.stdout  # the engine speaks nothing but TLS
        tls = [f"--tlscacert={certs.ca}", f"--tlscert={certs.client_cert}",
               f"--tlskey={certs.client_key}"]  # fmt: skip
        names = subprocess.run(
            ["docker", "--tlsverify", *tls, "-H", listed["endpoint"], "ps",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert "web" in names, names
    finally:
        daemon.stop()
        delete_all(engines, "workers")

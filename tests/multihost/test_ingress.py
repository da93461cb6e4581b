"""Three hosts, an ingress on each: any host answers for a service, from anywhere, and a
replica reaches its dependencies through its own host's ingress (tests on the rig)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from hosts_helpers import Rig
from listen_ports import free_port
from multihost_helpers import (
    IMAGE_API,
    IMAGE_WEB,
    Fleet,
    answers,
    get,
    get_on,
    instance_of,
    running_on,
    service_yaml,
    shop_on_three_hosts,
    wait_settled,
)
from reconciler_helpers import cluster_of, wait_for

#: The rig's engines are real Docker engines (never skipped: a missing part fails).
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_every_host_answers_for_a_service_spread_over_three_hosts(fleet: Fleet, rig: Rig) -> None:
    port = free_port()
    daemon, svc = shop_on_three_hosts(fleet, port)
    # Spread by node: two on each host, h3's through ssh.
    assert running_on(svc) == Counter({"h1": 2, "h2": 2, "h3": 2}), svc["instances"]
    replicas = {i["id"][:12] for i in svc["instances"]}

    # Every host's ingress answers: from outside, and from a client on each host. Each
    # ingress routes to replicas on every host (the answering instance varies).
    seen: Counter[str] = Counter()
    for target in rig.hosts:
        wait_for(
            f"{target.name}'s ingress",
            lambda target=target: get(target.address, port)[0] == 200,  # type: ignore[misc]
            60,
        )
        for _ in range(12):
            status, body = get(target.address, port)
            assert status == 200, (target.name, body)
            seen[instance_of(body) or "?"] += 1
        for client in rig.hosts:
            status, body = get_on(client, target.address, port)
            assert status == 200, (client.name, target.name, body)
            assert instance_of(body) in replicas, body
    assert set(seen) == replicas, f"every replica answers through the ingresses: {seen}"

    # gitorch nodes: engine version, how it is reached, round trip, capacity, ingress.
    nodes = fleet.nodes()
    for name, transport in (("h1", "tls (verified)"), ("h2", "tls (verified)"), ("h3", "ssh")):
        node = nodes[name]
        assert node["condition"] == "Ready", node
        assert node["engine"]["version"], node
        assert node["engine"]["transport"] == transport, node
        assert node["engine"]["rttMs"] is not None and node["engine"]["rttMs"] >= 0, node
        assert node["capacity"] == {"cpu": "2", "memory": "2Gi"}, node
        assert node["replicas"] == 2, node
        assert node["ingress"]["status"] == "running", node
    text = fleet.cli("nodes")
    assert text.code == 0 and "tls (verified)" in text.stdout and "ssh" in text.stdout, text

    # h1's ingress crashes (its PID 1 killed): its engine starts it again (restart policy,
    # no daemon needed), and it serves again.
    h1 = rig.hosts[0]
    (ingress,) = h1.containers(f"dev.gitorch.ingress={cluster_of(fleet.state)}")
    pid = int(h1.docker("inspect", "--format", "{{.State.Pid}}", ingress["ID"]).stdout)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        "h1's ingress restarted by its engine",
        lambda: (
            h1.docker("inspect", "--format", "{{.RestartCount}}", ingress["ID"]).stdout.strip()
            == "1"
        ),
        30,
    )
    wait_for("h1's ingress answers again", lambda: answers(h1.address, port), 30)


def test_a_replica_reaches_a_dependency_on_another_host(fleet: Fleet, rig: Rig) -> None:
    """web runs only on h1, api only on h3: web's replica calls api through h1's own
    ingress (the host's address, valid inside its container), which routes to h3."""
    api_port, web_port = free_port(), free_port()
    fleet.commit(
        {
            "nodes.yaml": fleet.nodes_yaml(),
            "api.yaml": service_yaml(
                "api", image=IMAGE_API, port=api_port, replicas=2, spread=False, node="h3"
            ),
            "web.yaml": service_yaml(
                "web",
                image=IMAGE_WEB,
                port=web_port,
                replicas=1,
                spread=False,
                node="h1",
                depends_on=("api",),
            ),
        },
        "web on h1 calls api on h3",
    )
    daemon = fleet.daemon()
    api = wait_settled(daemon, "api", 2, timeout=240)
    web = wait_settled(daemon, "web", 1, timeout=240)
    assert running_on(api) == Counter({"h3": 2}) and running_on(web) == Counter({"h1": 1})
    h1, _, h3 = rig.hosts

    # What the replica was given: its own host's address, never 127.0.0.1.
    (container,) = [c for c in fleet.containers("web")["h1"] if c["State"] == "running"]
    env = h1.docker("exec", container["ID"], "env").stdout
    assert f"API_SERVICE_HOST={h1.address}" in env, env
    assert f"API_SERVICE_PORT={api_port}" in env, env
    hosts = h1.docker("exec", container["ID"], "cat", "/etc/hosts").stdout
    assert f"{h1.address}\tapi.gitorch.internal" in hosts, hosts

    # h1 serves api too (its replica calls it), though no api replica runs there; h2 runs
    # nothing and has no ingress.
    nodes = fleet.nodes()
    assert nodes["h1"]["ingress"]["status"] == "running", nodes["h1"]
    assert nodes["h2"]["ingress"]["status"] is None, nodes["h2"]
    api_ids = {i["id"][:12] for i in api["instances"]}
    for _ in range(6):
        status, body = get(h1.address, web_port, "/cgi-bin/api")
        assert status == 200, body
        assert body.startswith("api says: app=api"), body
        assert instance_of(body) in api_ids, (body, api_ids)
    # and from inside the container itself, by name too
    answer = h1.docker(
        "exec", container["ID"], "wget", "-q", "-O", "-", f"http://api.gitorch.internal:{api_port}/"
    )
    assert answer.returncode == 0 and "app=api" in answer.stdout, answer
    assert get(h3.address, api_port)[0] == 200

    # `gitorch proxy stop` takes every endpoint down, the hosts' ingresses too, and the
    # running daemon does not start them again.
    done = fleet.cli("proxy", "stop")
    assert done.code == 0, (done.stdout, done.stderr)
    assert "node h1: ingress stopped" in done.stdout and "node h3: ingress stopped" in done.stdout
    time.sleep(3)  # six passes of the daemon (resync 0.5 s)
    cluster = cluster_of(fleet.state)
    assert not h1.containers(f"dev.gitorch.ingress={cluster}")
    assert not h3.containers(f"dev.gitorch.ingress={cluster}")
    assert not answers(h3.address, api_port) and not answers(h1.address, web_port)
    assert daemon.status()["nodes"], "the daemon still runs"

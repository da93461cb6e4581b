"""A host cut off the network, under load (tests on the rig): it is NotReady within seconds,
clients through the other hosts' ingresses see no failed request, its replicas are
replaced elsewhere after the grace period, and when its link comes back its stale copies
are removed without ever serving a request; a node whose CA is wrong is NotReady, saying
so."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from hosts_helpers import DOCKER_TLS_PORT, Rig
from listen_ports import free_port
from multihost_helpers import (
    IMAGE_API,
    NODE_GRACE,
    Fleet,
    Load,
    get,
    node_yaml,
    running_on,
    service_yaml,
    settled,
    shop_on_three_hosts,
    wait_settled,
)
from reconciler_helpers import cluster_of, port_open, wait_for

from gitorch.runtime.docker import DockerRuntime, DockerTLS
from gitorch.runtime.ingress_image import STATE, ingress_image
from gitorch.traffic.proxy.control import ProxyUnavailable
from gitorch.traffic.proxy.remote import RemoteProxyPlane
from gitorch.traffic.table import Backend, Route, RoutingTable

#: The rig's engines are real Docker engines (never skipped: a missing part fails).
pytestmark = [pytest.mark.docker, pytest.mark.slow]


#: Seconds from the cut to NotReady in the daemon's status: the resync (2 s), the ping's
#: timeout (3 s) and a margin for a loaded machine.
NOT_READY_WITHIN = 7.0


def _node(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in status["nodes"] if n["name"] == name)


def test_host_cut_off_under_load_then_back(fleet: Fleet, rig: Rig) -> None:
    port = free_port()
    daemon, svc = shop_on_three_hosts(fleet, port)
    assert running_on(svc) == Counter({"h1": 2, "h2": 2, "h3": 2}), svc["instances"]
    a, b, c = rig.hosts
    on_b = {i["id"][:12] for i in svc["instances"] if i["node"] == "h2"}
    for host in (a, c):
        wait_for(f"{host.name}'s ingress", lambda h=host: get(h.address, port)[0] == 200, 60)

    with Load(port, host=a.address) as through_a, Load(port, host=c.address) as through_c:
        time.sleep(3)
        assert on_b <= set(through_a.instances) | set(through_c.instances), "B serves before"
        b.cut()
        cut_at = time.time()
        wait_for(
            "h2 NotReady",
            lambda: not _node(daemon.status(), "h2")["ready"],
            30,
            describe=daemon.log_tail,
        )
        not_ready_after = time.time() - cut_at
        # The next pass's node check (a pass at most every 2 s, a ping of 3 s): not held
        # back by a traffic read waiting on the cut host's ingress (5 s; ~9 s in all).
        assert not_ready_after < NOT_READY_WITHIN, daemon.log_tail()
        # After the grace period the six replicas run again, on h1 and h3.
        replaced: dict[str, Any] = {}

        def back_to_six() -> bool:
            svc = daemon.service("shop") or {}
            replaced.update(svc)
            on = running_on(svc)
            return on["h1"] + on["h3"] == 6 and settled(
                {**svc, "instances": [i for i in svc["instances"] if i["node"] != "h2"]}, 6
            )

        wait_for(
            "six replicas on h1 and h3",
            back_to_six,
            NODE_GRACE + 120,
            describe=lambda: str(replaced.get("instances")) + daemon.log_tail(),
        )
        replaced_after = time.time() - cut_at
        time.sleep(2)  # traffic on the replacements
        b.mend()
        mend_at = time.time()
        # B's own ingress heard nothing for longer than the grace: it withdrew B's
        # replicas (their fence), so its clients never reach the stale copies either,
        # not even before the daemon's first pass after the link came back. (Once the
        # stale copies are gone B runs no replica of the shop, so its ingress is removed
        # and B refuses connections: `ingress: replicas`, the default.)
        through_b = Load(port, host=b.address)

        # Link up: the stale copies are removed; no duplicates; they never serve.
        def six_and_no_stale() -> bool:
            running = {
                host: [x for x in found if x["State"] == "running"]
                for host, found in fleet.containers("shop").items()
            }
            stale = [x for x in running["h2"] if x["ID"][:12] in on_b]
            return not stale and sum(len(v) for v in running.values()) == 6

        with through_b:
            wait_for("the stale copies removed", six_and_no_stale, 90, describe=daemon.log_tail)
            time.sleep(2)
    failures = through_a.failures + through_c.failures
    total = through_a.ok + through_c.ok + len(failures)
    # At most the requests in flight on B's replicas when the cut came: one per client
    # thread (a thread has one request in flight). The proxies give up on a cut-off
    # backend and retry idempotent requests elsewhere, so none are expected.
    assert len(failures) <= through_a.threads + through_c.threads, failures[:10]
    assert total > 100, (total, failures[:5])
    # Which ingress answered, how long after the mend, for a request sent how long
    # after the cut (negative: before it, an answer the proxy never gave up).
    served_late = {
        i: (host, round(t - mend_at, 2), round(load.sent_at[i] - cut_at, 2))
        for host, load in (("h1", through_a), ("h3", through_c), ("h2", through_b))
        for i, t in load.answered_at.items()
        if i in on_b and t >= mend_at
    }
    assert not served_late, (
        "stale replicas served after the link came back (instance: ingress, answered "
        f"seconds after the mend, sent seconds after the cut): {served_late}"
    )
    assert through_b.ok > 0, ("B's ingress answers after the link came back", through_b.failures)
    final = wait_settled(daemon, "shop", 6, timeout=60)
    slots = Counter(i["replica"] for i in final["instances"])
    assert all(n == 1 for n in slots.values()) and len(slots) == 6, slots
    print(
        f"cut: NotReady after {not_ready_after:.1f}s, six replicas again after "
        f"{replaced_after:.1f}s (grace {NODE_GRACE:g}s); {total} requests through h1 and h3, "
        f"{len(failures)} failed; through h2 after the mend {through_b.ok} answered, "
        f"{len(through_b.failures)} failed"
    )


def test_a_table_sent_into_a_cut_is_refused_when_the_link_comes_back(
    fleet: Fleet, rig: Rig
) -> None:
    """What the daemon wrote to a host's ingress as the link went down waits in the send
    queue of the engine connection; when the link comes back TCP delivers it, long after
    the daemon gave up on it. The relay refuses it (it came after its ``notAfter``): an
    old table must not replace what the ingress serves, or lift its fence."""
    port, late_port = free_port(), free_port()
    _, h2, _ = rig.hosts
    fleet.commit(
        {
            "nodes.yaml": fleet.nodes_yaml(),
            "shop.yaml": service_yaml(
                "shop", image=IMAGE_API, port=port, replicas=1, spread=False, node="h2"
            ),
        },
        "shop on h2",
    )
    daemon = fleet.daemon()
    wait_settled(daemon, "shop", 1, timeout=240)
    wait_for("h2's ingress", lambda: get(h2.address, port)[0] == 200, 60)
    daemon.stop()  # this test drives h2's ingress itself; it keeps serving meanwhile
    assert rig.tls is not None
    runtime = DockerRuntime(
        "h2",
        f"tcp://{h2.address}:{DOCKER_TLS_PORT}",
        address=h2.address,
        tls=DockerTLS(str(rig.tls.ca), str(rig.tls.cert), str(rig.tls.key)),
    )
    cluster = cluster_of(fleet.state)
    ingress = runtime.ingress(cluster)
    assert ingress is not None and ingress.running, ingress
    # The daemon's relay command (this installation's image: naming it builds nothing).
    relay = tuple(ingress_image(fleet.root).command("relay", "--state", STATE))
    plane = RemoteProxyPlane("h2", lambda: runtime.ingress_channel(cluster, relay))
    late_table = RoutingTable(
        {"late": Route("late", late_port, backends=(Backend("gone", f"{h2.address}:9"),))}
    )
    try:
        assert plane.health().ok  # the session is open before the cut
        h2.cut()
        try:
            sent_at = time.monotonic()
            with pytest.raises(ProxyUnavailable, match="node h2: the ingress did not answer"):
                plane.apply(late_table)
            gave_up_after = time.monotonic() - sent_at
        finally:
            h2.mend()
        # TCP retransmits the queued request within seconds of the mend (its backoff
        # doubles from 0.2 s: the next try comes at most ~6 s after the mend here).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert not port_open(late_port, h2.address), "the late table was applied"
            time.sleep(0.2)
        assert get(h2.address, port)[0] == 200, "h2's ingress serves its last good table"
        print(f"the daemon gave up on the table after {gave_up_after:.1f} s; it was refused")
    finally:
        plane.close()


def test_wrong_ca_is_not_ready_saying_so_and_ssh_runs_replicas(fleet: Fleet, rig: Rig) -> None:
    """h2 named with a CA that signed nothing of the rig's: NotReady, the message names the
    CA; h3 over ssh runs the replicas (and h1 over TLS). Two more Nodes fail, each saying
    why and naming itself: an engine at an address nobody answers (timed out), and h3's
    sshd with a host key the known hosts do not hold."""
    port = free_port()
    h1, h2, h3 = rig.hosts
    assert rig.ssh is not None
    fleet.commit(
        {
            "nodes.yaml": node_yaml(rig, h1)
            + "---\n"
            + node_yaml(rig, h2, ca="wrong-ca.pem")
            + "---\n"
            + node_yaml(rig, h3, ssh=True)
            + "---\n"
            + node_yaml(rig, h1, name="silent", endpoint=f"tcp://{rig.prefix}.99:2376")
            + "---\n"
            + node_yaml(
                rig,
                h3,
                name="stranger",
                ssh=True,
                known_hosts="stranger_known_hosts",
                endpoint=f"ssh://root@{h3.address}:22",
            ),
            "shop.yaml": service_yaml("shop", image=IMAGE_API, port=port, replicas=4),
        },
        "h2 with the wrong CA",
    )
    daemon = fleet.daemon()
    svc = wait_settled(daemon, "shop", 4, timeout=240)
    assert running_on(svc) == Counter({"h1": 2, "h3": 2}), svc["instances"]
    bad = _node(daemon.status(), "h2")
    assert not bad["ready"], bad
    assert "node h2" in bad["message"] and "CA" in bad["message"], bad
    assert "certificate" in bad["message"], bad
    nodes = fleet.nodes()
    assert nodes["h2"]["condition"] == "NotReady", nodes["h2"]
    assert "runtime.tls.caCert" in nodes["h2"]["message"], nodes["h2"]
    assert nodes["h3"]["engine"]["transport"] == "ssh", nodes["h3"]
    assert nodes["h3"]["replicas"] == 2, json.dumps(nodes["h3"])
    silent = _node(daemon.status(), "silent")
    assert not silent["ready"] and "node silent" in silent["message"], silent
    # Nobody at that address: the connect times out, or the kernel gives up on ARP first.
    said = silent["message"]
    assert "timed out" in said or "no route to host" in said, silent
    stranger = _node(daemon.status(), "stranger")
    assert not stranger["ready"] and "node stranger" in stranger["message"], stranger
    assert "host key" in stranger["message"], stranger
    assert get(h3.address, port)[0] == 200
    assert not any(x["State"] == "running" for x in fleet.containers("shop")["h2"])

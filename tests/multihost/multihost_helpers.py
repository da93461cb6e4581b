"""Helpers for the tests on the rig of hosts (``hosts_helpers.Rig``): one test's fleet (a
repo of Nodes for the rig's hosts, a state and secrets directory, its daemons), manifests,
and clients on each host and outside.

The Nodes: h1 and h2 are reached over TLS (the rig's CA and client certificate, copied
into the test's secrets directory and named there, as an operator would), h3 over ssh
(the rig's key and known hosts, likewise). Every host gets its own ingress; services
spread over them.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_plane_helpers import stop_data_plane
from hosts_helpers import Rig, RigHost
from reconciler_helpers import (
    CliRun,
    DaemonProc,
    LoadClient,
    cluster_of,
    commit,
    docker_service,
    gitorch,
    wait_for,
)

IMAGE_API = "gitorch-example/api:1"
IMAGE_WEB = "gitorch-example/web:1"
IMAGES = (IMAGE_API, IMAGE_WEB)

#: The daemon's timings on the rig: a node silent this long is lost (its replicas move).
NODE_GRACE = 8.0
RESYNC = 0.5


# -- manifests -------------------------------------------------------------------------------


def node_yaml(
    rig: Rig,
    host: RigHost,
    *,
    name: str | None = None,
    ssh: bool = False,
    ca: str = "ca.pem",
    known_hosts: str = "known_hosts",
    endpoint: str | None = None,
) -> str:
    """A Node for ``host``: TLS (``ca`` names the CA file in the secrets dir) or ssh
    (``known_hosts`` likewise); ``endpoint`` replaces the host's engine endpoint."""
    if ssh:
        assert rig.ssh is not None
        runtime = {
            "driver": "docker",
            "endpoint": endpoint or rig.ssh.endpoint,
            "ssh": {"identityFile": "rig/ssh-key", "knownHostsFile": f"rig/{known_hosts}"},
        }
    else:
        runtime = {
            "driver": "docker",
            "endpoint": endpoint or host.tcp_endpoint,
            "tls": {
                "caCert": f"rig/{ca}",
                "clientCert": "rig/client.pem",
                "clientKey": "rig/client-key.pem",
            },
        }
    return (
        "\n".join(
            [
                "apiVersion: gitorch.dev/v1",
                "kind: Node",
                "metadata:",
                f"  name: {name or host.name}",
                "spec:",
                f"  runtime: {json.dumps(runtime)}",
                f"  address: {host.address}",
                "  capacity: {cpu: '2', memory: 2Gi}",
            ]
        )
        + "\n"
    )


def service_yaml(
    name: str,
    *,
    image: str,
    port: int,
    replicas: int,
    spread: bool = True,
    node: str | None = None,
    depends_on: tuple[str, ...] = (),
) -> str:
    """A Service of an example image (busybox httpd) exposed on ``port``, spread over
    the nodes (or on ``node`` only)."""
    placement: dict[str, Any] = {}
    if spread:
        placement["spread"] = [
            {"topologyKey": "node", "maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}
        ]
    if node:
        placement["nodeSelector"] = {"node": node}
    text = docker_service(name, port=port, image=image, replicas=replicas, deadline=120)
    if depends_on:
        text += f"  dependsOn: {json.dumps(list(depends_on))}\n"
    if placement:
        text += f"  placement: {json.dumps(placement)}\n"
    return text


def shop_on_three_hosts(
    fleet: Fleet, port: int, replicas: int = 6
) -> tuple[DaemonProc, dict[str, Any]]:
    """The rig's three Nodes and ``shop`` spread over them; the daemon, once it settled."""
    fleet.commit(
        {
            "nodes.yaml": fleet.nodes_yaml(),
            "shop.yaml": service_yaml("shop", image=IMAGE_API, port=port, replicas=replicas),
        },
        f"three hosts, {replicas} replicas",
    )
    daemon = fleet.daemon()
    return daemon, wait_settled(daemon, "shop", replicas, timeout=240)


# -- one test's fleet ------------------------------------------------------------------------


@dataclass
class Fleet:
    """One test's cluster on the rig: repo, state and secrets, its daemons."""

    rig: Rig
    root: Path
    repo: Path
    state: Path
    secrets: Path
    daemons: list[DaemonProc] = field(default_factory=list)
    #: Daemons' runtime directories on etcd state (each stands for a host of its own).
    runtimes: list[Path] = field(default_factory=list)
    #: The cluster's name when it is not in ``state`` (etcd: the test sets it).
    cluster: str | None = None

    def __post_init__(self) -> None:
        """The operator's secrets directory: the rig's client files, under ``rig/``."""
        assert self.rig.tls is not None and self.rig.ssh is not None
        folder = self.secrets / "rig"
        folder.mkdir(parents=True)
        for source, name in (
            (self.rig.tls.ca, "ca.pem"),
            (self.rig.tls.wrong_ca, "wrong-ca.pem"),
            (self.rig.tls.cert, "client.pem"),
            (self.rig.tls.key, "client-key.pem"),
            (self.rig.ssh.identity, "ssh-key"),
            (self.rig.ssh.known_hosts, "known_hosts"),
        ):
            shutil.copyfile(source, folder / name)
            (folder / name).chmod(0o600)
        # Known hosts that hold another key for the ssh host (the client's own).
        kind, key = Path(f"{self.rig.ssh.identity}.pub").read_text().split()[:2]
        (folder / "stranger_known_hosts").write_text(f"{self.rig.ssh.address} {kind} {key}\n")

    def nodes_yaml(self) -> str:
        """h1 and h2 over TLS, h3 over ssh."""
        h1, h2, h3 = self.rig.hosts
        return (
            node_yaml(self.rig, h1)
            + "---\n"
            + node_yaml(self.rig, h2)
            + "---\n"
            + node_yaml(self.rig, h3, ssh=True)
        )

    def commit(self, files: dict[str, str | None], message: str) -> str:
        return commit(self.repo, files, message)

    def daemon(
        self, *extra: str, store_url: str | None = None, runtime: Path | None = None
    ) -> DaemonProc:
        """A daemon on this fleet's state directory; with ``store_url`` (etcd), on
        ``runtime`` as its runtime directory (one per host it stands for)."""
        if store_url is not None:
            assert runtime is not None
            runtime.mkdir(parents=True, exist_ok=True)
            if runtime not in self.runtimes:
                self.runtimes.append(runtime)
        daemon = DaemonProc(
            str(self.repo),
            runtime or self.state,
            "process",
            interval=2.0,
            resync=RESYNC,
            store_url=store_url,
            extra=(
                "--node-grace",
                str(NODE_GRACE),
                "--secrets-dir",
                str(self.secrets),
                "--ingress-workers",
                "1",
                *extra,
            ),
        )
        self.daemons.append(daemon)
        return daemon

    def cli(self, *args: str, timeout: float = 120) -> CliRun:
        return gitorch(*args, "--state", str(self.state), cwd=self.root, timeout=timeout)

    def nodes(self) -> dict[str, dict[str, Any]]:
        done = self.cli("nodes", "--format", "json")
        assert done.code == 0, (done.code, done.stderr)
        return {n["name"]: n for n in done.json()["nodes"]}

    def containers(self, service: str) -> dict[str, list[dict[str, Any]]]:
        """host name -> the containers of ``service`` there (docker ps, every state)."""
        cluster = cluster_of(self.state)
        found: dict[str, list[dict[str, Any]]] = {}
        for host in self.rig.hosts:
            found[host.name] = [
                c
                for c in host.containers(f"dev.gitorch.cluster={cluster}")
                if f"dev.gitorch.service={service}" in c.get("Labels", "")
            ]
        return found

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        for local in (self.state, *self.runtimes):
            stop_data_plane(local)  # the local proxy outlives the daemon by design
        # ... and so do the hosts' ingresses: removed with every replica of the cluster.
        self.rig.remove_cluster(self.cluster or cluster_of(self.state))


# -- reading the cluster -----------------------------------------------------------------------


def running_on(svc: dict[str, Any] | None) -> Counter[str]:
    """node -> running replicas of a status service."""
    if svc is None:
        return Counter()
    return Counter(i["node"] for i in svc["instances"] if i["state"] == "running")


def settled(svc: dict[str, Any] | None, replicas: int) -> bool:
    """Exactly ``replicas`` instances, each running and ready, phase Healthy."""
    if svc is None:
        return False
    instances = svc["instances"]
    return (
        svc["rollout"]["phase"] == "Healthy"
        and len(instances) == replicas
        and all(i["state"] == "running" and i["ready"] for i in instances)
    )


# -- clients ---------------------------------------------------------------------------------


def get(address: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One GET from outside (the root namespace)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def answers(address: str, port: int) -> bool:
    """Whether a GET from outside is answered 200 (a refused connection is a no)."""
    try:
        return get(address, port)[0] == 200
    except OSError:
        return False


_GET_ON_HOST = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
conn.request("GET", sys.argv[3])
resp = conn.getresponse()
print(resp.status, resp.read().decode("utf-8", "replace"))
"""


def get_on(host: RigHost, address: str, port: int, path: str = "/") -> tuple[int, str]:
    """One GET from a client on ``host`` (a process in its network namespace)."""
    done = host.run(sys.executable, "-c", _GET_ON_HOST, address, str(port), path, timeout=20)
    if done.returncode != 0:
        return 0, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
    status, _, body = done.stdout.partition(" ")
    return int(status), body.strip()


def instance_of(body: str) -> str | None:
    """The container that answered (the example page's ``instance=ID:8080``)."""
    for word in body.split():
        if word.startswith("instance="):
            return word.split("=", 1)[1].split(":", 1)[0]
    return None


@dataclass
class Load(LoadClient):
    """Threads sending GETs without pause to one host's ingress (keep-alive, from
    outside); which instance answered is counted, and when it last did."""

    threads: int = 3
    # Longer than any wait of the proxy on a backend cut off (the daemon lists it
    # unreachable within seconds, and its requests go elsewhere): only what the proxy
    # answers counts.
    timeout: float = 30.0
    instances: Counter[str] = field(default_factory=Counter)
    answered_at: dict[str, float] = field(default_factory=dict)  # instance -> last answer
    #: instance -> when the request of its last answer was sent (a late answer to a
    #: request sent long before is one the proxy did not give up, not a new one routed)
    sent_at: dict[str, float] = field(default_factory=dict)
    _sending: threading.local = field(default_factory=threading.local)

    def _one(self, conn: http.client.HTTPConnection) -> tuple[int, str]:
        self._sending.at = time.time()
        return super()._one(conn)

    def _record(self, body: str) -> None:
        super()._record(body)
        instance = instance_of(body) or "?"
        self.instances[instance] += 1
        self.answered_at[instance] = time.time()
        self.sent_at[instance] = getattr(self._sending, "at", self.answered_at[instance])


def wait_settled(daemon: DaemonProc, service: str, replicas: int, timeout: float) -> dict[str, Any]:
    """The status service once it runs ``replicas`` ready replicas, Healthy."""
    found: dict[str, Any] = {}

    def done() -> bool:
        svc = daemon.service(service)
        if svc is not None:
            found.update(svc)
        return settled(svc, replicas)

    wait_for(
        f"{service}: {replicas} ready replicas",
        done,
        timeout,
        describe=lambda: (
            json.dumps(found.get("instances"), indent=1)[-3000:] + "\n" + daemon.log_tail()
        ),
    )
    return found

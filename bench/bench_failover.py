"""Failover time: ``kill -9`` of the leading daemon until the standby leads, N times.

    python3 bench/bench_failover.py [--kills 10] [--lease-ttl 5] [--replicas 2]

Starts a three-member etcd cluster on loopback (Debian's etcd-server, as the tests do),
a Git repo with one Service of the example api app (process driver, behind the built-in
proxy) and two ``gitorch daemon`` processes on one etcd namespace sharing a runtime
directory. Then ``--kills`` times: find the leader (its API), ``kill -9`` it, and time
until the other daemon's API says it leads (polled every 20 ms); the killed one is started
again (it becomes the standby) before the next round. A keep-alive client runs through
the proxy the whole time and its failed requests are counted.

The floor is the lease: it expires one TTL after its last renewal, and the leader renews
every third of the TTL, so a takeover cannot come sooner than 2/3 of the TTL after the
kill, nor (give or take etcd's lease-expiry tick, 0.5 s, and the standby's campaign
interval, 0.5 s) later than the TTL. Prints each takeover, the median and the maximum,
and their ratio to the TTL.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "rigs"))  # free ports (shared with the tests)
for helpers in ("shared", "reconciler"):  # the tests' etcd cluster, daemon and load client
    sys.path.insert(0, str(REPO / "tests" / helpers))

from data_plane_helpers import stop_data_plane  # noqa: E402
from etcd_helpers import EtcdCluster, new_namespace  # noqa: E402
from listen_ports import free_port  # noqa: E402
from reconciler_helpers import (  # noqa: E402
    DaemonProc,
    LoadClient,
    commit,
    converged,
    init_repo,
    process_service,
    remove_cluster,
    wait_for,
)
from verdicts import emit  # noqa: E402

from gitorch.live.inventory import local_node_name, runtime_dir  # noqa: E402
from gitorch.runtime.process import ProcessRuntime  # noqa: E402
from gitorch.state import StateStore  # noqa: E402
from gitorch.state.etcd.backend import EtcdBackend  # noqa: E402


def role(daemon: DaemonProc) -> str | None:
    try:
        code, data = daemon.request("GET", "/api/v1/status")
    except OSError:
        return None
    return data.get("controlPlane", {}).get("role") if code == 200 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitorch-bench-failover-") as tmp:
        root = Path(tmp)
        etcd = EtcdCluster(root / "etcd").start()
        url = etcd.url(new_namespace("bench"))
        repo, runtime = root / "repo", root / "run"
        init_repo(repo)
        port = free_port()
        sha = commit(
            repo,
            {"api.yaml": process_service("api", port=port, replicas=args.replicas)},
            "api v1",
        )
        daemons: dict[str, DaemonProc] = {}

        def start(name: str) -> DaemonProc:
            daemons[name] = DaemonProc(
                str(repo),
                runtime,
                "process",
                interval=2.0,
                resync=0.5,
                store_url=url,
                extra=["--name", name, "--lease-ttl", f"{args.lease_ttl:g}"],
            )
            return daemons[name]

        takeovers: list[float] = []
        failed = total = 0
        try:
            start("a")
            start("b")
            wait_for(
                "converged",
                lambda: any(
                    role(d) == "leader" and converged(d.service("api"), sha, args.replicas)
                    for d in daemons.values()
                ),
                60,
            )
            with LoadClient(port, threads=2) as load:
                for round_ in range(args.kills):
                    leader_name = wait_for(
                        "a leader",
                        lambda: next((n for n, d in daemons.items() if role(d) == "leader"), None),
                        30,
                    )
                    other = next(d for n, d in daemons.items() if n != leader_name)
                    wait_for("a standby", lambda other=other: role(other) == "standby", 30)
                    victim = daemons[leader_name]
                    os.kill(victim.proc.pid, signal.SIGKILL)
                    killed = time.monotonic()
                    victim.proc.wait(10)
                    wait_for(
                        "the takeover",
                        lambda other=other: role(other) == "leader",
                        args.lease_ttl * 4,
                        interval=0.02,
                    )
                    takeovers.append(time.monotonic() - killed)
                    print(
                        f"kill {round_ + 1}: {leader_name} killed, took over in {takeovers[-1]:.2f}s"
                    )
                    start(leader_name)
                failed, total = len(load.failures), load.total
        finally:
            for daemon in daemons.values():
                daemon.stop()
            stop_data_plane(runtime)
            node = local_node_name()
            remove_cluster(ProcessRuntime(node, runtime_dir(runtime, node)), cluster_or_none(url))
            etcd.close()
    median, worst = statistics.median(takeovers), max(takeovers)
    ttl = args.lease_ttl
    print(
        f"{args.kills} leader kills, lease TTL {ttl:g}s: median {median:.2f}s "
        f"({median / ttl:.2f}x TTL), max {worst:.2f}s ({worst / ttl:.2f}x TTL); "
        f"requests through the proxy meanwhile: {total}, failed: {failed}"
    )
    emit(
        f"leader takeover after a SIGKILL, slowest of {args.kills}",
        f"{worst:.2f} s (median {median:.2f} s)",
        against=f"the lease TTL ({ttl:g} s)",
        ratio=f"{worst / ttl:.2f}x",
    )
    emit(
        "failed requests through the proxy across the kills",
        f"{failed} of {total:,}",
        goal="0",
        met=failed == 0,
    )


def cluster_or_none(url: str) -> str | None:
    try:
        with StateStore(url, readonly=True) as store:
            assert isinstance(store.backend, EtcdBackend)
            return store.backend.cluster_name()
    except Exception:  # teardown after a failure: best effort
        return None


if __name__ == "__main__":
    sys.exit(main())

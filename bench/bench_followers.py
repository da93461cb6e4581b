"""How soon the other hosts serve the leader's routing table (gitorch/apply/followers.py).

    python3 bench/bench_followers.py [--rounds 30] [--followers 2] [--routes 2000]

Starts a three-member etcd cluster on loopback (Debian's etcd-server, as the tests do)
and, in this process, one leader and ``--followers`` standbys (real campaigns on one
namespace), each follower with a real data plane of its own: the built-in load balancer
on its own loopback address (127.0.0.2, 127.0.0.3, ...), following the table's key as a
daemon does (a watch on the key, then its revision and value read). Each round the leader applies a new table (its one backend
changed) through the same ``FollowedDataPlane`` the daemon uses, and the time until every
follower has taken it and said so is measured: what a leaving replica's drain waits for.

Floor, measured in each round beside it: one etcd write and one read back to back, the
least an acknowledgement through etcd costs (the table written, the follower's record
read). Above it: the watch's wake, the follower's reads of the key, its data plane's
apply, its member record written by its campaign's thread, and the leader's read of the
records (reused for 10 ms; a daemon's drain asks every 50 ms). Rounds start at random
moments (0-100 ms apart), as tables do.

Then the cost of storing a big table: ``--routes`` routes of two backends with Docker's
64-character ids, stored by the leader (canonical JSON, zlib, a fenced put), against
``json.dumps`` of the same table alone.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "rigs"))  # free ports (shared with the tests)
sys.path.insert(0, str(REPO / "tests" / "shared"))  # the tests' etcd cluster

from etcd_helpers import EtcdCluster, new_namespace  # noqa: E402
from listen_ports import free_port  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.apply.followers import (  # noqa: E402
    FollowedDataPlane,
    TableFollower,
    TablePublisher,
    _canonical,
)
from gitorch.state import StateStore  # noqa: E402
from gitorch.state.etcd.backend import EtcdBackend  # noqa: E402
from gitorch.state.etcd.election import Leadership  # noqa: E402
from gitorch.state.etcd.tables import FOLLOWS_FIELD, Place  # noqa: E402
from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer  # noqa: E402
from gitorch.traffic.table import Backend, Route, RoutingTable  # noqa: E402


def _etcd(store: StateStore) -> EtcdBackend:
    assert isinstance(store.backend, EtcdBackend)
    return store.backend


def _one_route(port: int, round_no: int) -> RoutingTable:
    backend = Backend(f"replica-{round_no}", f"127.0.0.1:{20000 + round_no % 1000}")
    return RoutingTable({"api": Route("api", port, backends=(backend,))})


def _big_table(routes: int) -> RoutingTable:
    return RoutingTable(
        {
            f"svc-{n:04d}": Route(
                f"svc-{n:04d}",
                20000 + n,
                backends=tuple(
                    Backend(
                        hashlib.sha256(f"{n}-{r}".encode()).hexdigest(),
                        f"10.0.{n % 250}.{r}:{30000 + n}",
                    )
                    for r in range(2)
                ),
            )
            for n in range(routes)
        }
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--routes", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gitorch-bench-followers-") as tmp:
        cluster = EtcdCluster(Path(tmp) / "etcd").start()
        url = cluster.url(new_namespace("bench"))
        stores = [StateStore(url) for _ in range(args.followers + 1)]
        campaigns: list[Leadership] = []
        followers: list[TableFollower] = []
        planes: list[BuiltinLoadBalancer] = []
        try:
            for i, store in enumerate(stores):
                name = "leader" if i == 0 else f"follower-{i}"
                info = {"runtimeDir": f"{tmp}/{name}", FOLLOWS_FIELD: i > 0}
                campaign = Leadership(_etcd(store), name, info=info)
                if i == 0:
                    _etcd(store).fence_with(campaign.fence)
                campaign.start()
                campaigns.append(campaign)
            leader = campaigns[0]
            assert leader.leading, "the first campaign leads"
            publisher = TablePublisher(_etcd(stores[0]), leader, Place.of(leader.info))
            plane = FollowedDataPlane(BuiltinLoadBalancer("127.0.0.1"), publisher, threading.Lock())
            for i in range(1, len(stores)):
                local = BuiltinLoadBalancer(f"127.0.0.{i + 1}")
                planes.append(local)
                follower = TableFollower(
                    _etcd(stores[i]),
                    campaigns[i],
                    Place.of(campaigns[i].info),
                    lambda local=local: local,  # type: ignore[misc]
                    threading.Lock(),
                )
                follower.start()
                followers.append(follower)
            port = free_port()
            backend = _etcd(stores[0])
            reader = _etcd(stores[1])
            takes: list[float] = []
            floors: list[float] = []
            pace = random.Random(args.rounds)
            for round_no in range(args.rounds):
                # A table comes at any moment of the followers' polls, not just after one.
                time.sleep(pace.uniform(0, 0.1))
                began = time.perf_counter()
                plane.apply(_one_route(port, round_no))
                while publisher.lagging():
                    time.sleep(0.002)
                takes.append(time.perf_counter() - began)
                began = time.perf_counter()
                value = {"round": round_no}
                backend.atomic(lambda value=value: backend.put("bench/floor", value))  # type: ignore[misc]
                reader.peek("bench/floor")
                floors.append(time.perf_counter() - began)
            take, floor = statistics.median(takes), statistics.median(floors)
            print(
                f"{args.followers} follower(s), {args.rounds} tables: taken by all in "
                f"median {_ms(take)}, p90 {_ms(sorted(takes)[int(0.9 * (len(takes) - 1))])}, "
                f"max {_ms(max(takes))}; etcd write + read {_ms(floor)} "
                f"(x{take / floor:.1f})"
            )
            emit(
                f"table taken by {args.followers} follower(s) (median)",
                _ms(take),
                against=f"etcd write+read {_ms(floor)}",
                ratio=f"{take / floor:.1f}x",
            )

            big = _big_table(args.routes)
            dumps: list[float] = []
            stores_s: list[float] = []
            for round_no in range(3):
                began = time.perf_counter()
                _canonical(big)
                dumps.append(time.perf_counter() - began)
                changed = RoutingTable(
                    {**big.routes, "extra": _one_route(port, round_no).routes["api"]}
                )
                began = time.perf_counter()
                publisher.store(changed)
                stores_s.append(time.perf_counter() - began)
            dump, stored = min(dumps), min(stores_s)
            print(
                f"{args.routes} routes stored in {_ms(stored)} (best of 3) against json.dumps "
                f"alone {_ms(dump)} (x{stored / dump:.1f})"
            )
            emit(
                f"{args.routes}-route table stored (best of 3)",
                _ms(stored),
                against=f"json.dumps {_ms(dump)}",
                ratio=f"{stored / dump:.1f}x",
            )
        finally:
            for follower in followers:
                follower.stop()
            for local in planes:
                local.close()
            for campaign in campaigns:
                campaign.stop()
            for store in stores:
                store.close()
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The leader's table followed by the other hosts (gitorch/apply/followers.py), on a real
etcd cluster with two campaigns in this process. The follower's data plane is a recorder
here (what it was given, what it has in flight); tests/ha/test_every_host_serves.py runs two
real daemons, each with its own proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from etcd_helpers import EtcdCluster, new_namespace
from reconciler_helpers import wait_for

from gitorch.apply.followers import FollowedDataPlane, StoredTable, TableFollower, TablePublisher
from gitorch.errors import GitorchError
from gitorch.state import StateStore
from gitorch.state.etcd.backend import EtcdBackend
from gitorch.state.etcd.election import Leadership, read_leadership
from gitorch.state.etcd.tables import FOLLOWS_FIELD, Place
from gitorch.traffic.routes import ListenError
from gitorch.traffic.table import Backend, BackendStats, DataPlaneHealth, Route, RoutingTable


@dataclass
class RecordingPlane:
    """A data plane that keeps what it is given; ``in_flight`` per backend id, ``refuse``
    routes whose port 'cannot be bound'."""

    tables: list[RoutingTable] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    broken: bool = False  # the proxy does not answer

    def apply(self, table: RoutingTable) -> None:
        if self.broken:
            raise GitorchError("the proxy does not answer")
        refused = {
            name: f"service {name}: port taken" for name in table.routes if name in self.refuse
        }
        kept = RoutingTable({n: r for n, r in table.routes.items() if n not in refused})
        self.tables.append(kept)
        if refused:
            raise ListenError("ports taken", routes=refused)

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        return BackendStats(in_flight=self.in_flight.get(backend_id, 0))

    def figures(self, service: str) -> list[Any]:
        return []

    def version_figures(self, service: str) -> dict[str, Any]:
        return {}

    def health(self) -> DataPlaneHealth:
        return DataPlaneHealth("recording", True, "")

    def close(self) -> None:
        return None


def _table(*backends: tuple[str, bool], name: str = "api", port: int = 8080) -> RoutingTable:
    route = Route(
        name,
        port,
        backends=tuple(
            Backend(ident, f"127.0.0.1:{9000 + i}", draining=drain)
            for i, (ident, drain) in enumerate(backends)
        ),
    )
    return RoutingTable({name: route})


@dataclass
class Hosts:
    leader: Leadership
    standby: Leadership
    backend: EtcdBackend
    publisher: TablePublisher
    leader_plane: RecordingPlane
    plane: FollowedDataPlane
    follower_plane: RecordingPlane
    follower: TableFollower


def _etcd(store: StateStore) -> EtcdBackend:
    assert isinstance(store.backend, EtcdBackend)
    return store.backend


@pytest.fixture
def stores(etcd_cluster: EtcdCluster) -> Iterator[tuple[StateStore, StateStore]]:
    url = etcd_cluster.url(new_namespace())
    pair = StateStore(url), StateStore(url)
    yield pair
    for store in pair:
        store.close()


def _hosts(
    stores: tuple[StateStore, StateStore], tmp_path: Path, *, same_place: bool, ttl: float = 2.0
) -> Hosts:
    backends = [_etcd(s) for s in stores]
    here = str(tmp_path / "a")
    there = here if same_place else str(tmp_path / "b")
    leader = Leadership(
        backends[0], "alpha", ttl=ttl, info={"runtimeDir": here, FOLLOWS_FIELD: True}
    )
    standby = Leadership(
        backends[1], "beta", ttl=ttl, info={"runtimeDir": there, FOLLOWS_FIELD: True}
    )
    backends[0].fence_with(leader.fence)
    leader.start()
    standby.start()
    assert leader.leading and not standby.leading
    publisher = TablePublisher(backends[0], leader, Place.of(leader.info))
    leader_plane = RecordingPlane()
    follower_plane = RecordingPlane()
    follower = TableFollower(
        backends[1],
        standby,
        Place.of(standby.info),
        lambda: follower_plane,
        threading.Lock(),
        drain_timeout=5.0,
    )
    return Hosts(
        leader,
        standby,
        backends[0],
        publisher,
        leader_plane,
        FollowedDataPlane(leader_plane, publisher, threading.Lock()),
        follower_plane,
        follower,
    )


@pytest.fixture
def hosts(stores: tuple[StateStore, StateStore], tmp_path: Path) -> Iterator[Hosts]:
    made = _hosts(stores, tmp_path, same_place=False)
    yield made
    made.follower.stop()
    made.standby.stop()
    made.leader.stop()


def _states(hosts: Hosts) -> dict[str, str]:
    return {m["name"]: m["table"] for m in read_leadership(hosts.backend)["members"]}


def test_a_follower_takes_the_leaders_table_and_the_drain_waits_for_it(hosts: Hosts) -> None:
    table = _table(("api-1", False), ("api-2", True))
    hosts.plane.apply(table)
    assert hosts.leader_plane.tables == [table]
    # Stored, not taken yet: the leader's drain counts the follower as a request in flight.
    assert hosts.plane.backend_stats("api", "api-2") == BackendStats(in_flight=1)
    assert _states(hosts) == {"alpha": "drives", "beta": "behind"}
    hosts.follower.step()
    assert hosts.follower_plane.tables == [table]
    wait_for("beta's record saying so", lambda: _states(hosts)["beta"] == "follows", 5)
    wait_for(
        "the drain counting nothing",
        lambda: hosts.plane.backend_stats("api", "api-2") == BackendStats(in_flight=0),
        5,
    )
    hosts.follower.step()  # the same table: nothing applied again
    assert len(hosts.follower_plane.tables) == 1
    # The same table published again is not stored again (no new id to wait for).
    hosts.plane.apply(table)
    assert hosts.publisher.lagging() == ()


def test_a_following_daemon_is_woken_by_the_tables_write_not_by_its_poll(hosts: Hosts) -> None:
    """The follower's thread watches the table key: a table is taken as it lands, with a
    poll (this one: a minute) only as the fallback when etcd does not answer a watch."""
    hosts.plane.apply(_table(("api-1", False)))
    hosts.follower.step()  # the first table: the revision to watch from
    hosts.follower.poll = 60.0
    hosts.follower.start()
    try:
        table = _table(("api-1", True), ("api-2", False))
        hosts.plane.apply(table)
        wait_for("the table taken", lambda: hosts.follower_plane.tables[-1] == table, 5)
        wait_for("acknowledged", lambda: hosts.publisher.lagging() == (), 5)
    finally:
        hosts.follower.stop()


def test_a_follower_acknowledges_only_once_its_requests_to_leaving_backends_finished(
    hosts: Hosts,
) -> None:
    hosts.follower_plane.in_flight["api-2"] = 1
    hosts.plane.apply(_table(("api-1", False), ("api-2", True)))
    stepping = threading.Thread(target=hosts.follower.step)
    stepping.start()
    wait_for("the follower applying", lambda: hosts.follower_plane.tables, 5)
    stepping.join(0.5)
    assert stepping.is_alive()  # draining: not acknowledged
    assert hosts.publisher.lagging() == ("beta",)
    hosts.follower_plane.in_flight["api-2"] = 0
    stepping.join(5)
    assert not stepping.is_alive()
    wait_for("acknowledged", lambda: hosts.publisher.lagging() == (), 5)


def test_a_port_this_host_cannot_bind_is_left_out_here_alone(hosts: Hosts) -> None:
    hosts.follower_plane.refuse = {"admin"}
    table = RoutingTable(
        {
            **_table(("api-1", False)).routes,
            **_table(("admin-1", False), name="admin", port=8081).routes,
        }
    )
    hosts.plane.apply(table)
    hosts.follower.step()
    assert list(hosts.follower_plane.tables[-1].routes) == ["api"]
    # It took the table (the leader does not wait on it) and says what it left out.
    wait_for("acknowledged", lambda: hosts.publisher.lagging() == (), 5)
    state = _states(hosts)["beta"]
    assert state.startswith("refused: admin: service admin: port taken"), state


def test_a_host_whose_proxy_fails_answers_at_once_and_takes_the_table_once_it_is_back(
    hosts: Hosts,
) -> None:
    clock = [1000.0]
    hosts.follower.monotonic = lambda: clock[0]
    hosts.follower_plane.broken = True
    table = _table(("api-1", False), ("api-2", True))
    hosts.plane.apply(table)
    hosts.follower.step()
    # It serves nothing: the leader does not wait on it, and status says why.
    wait_for("acknowledged", lambda: hosts.publisher.lagging() == (), 5)
    state = _states(hosts)["beta"]
    assert (
        state == "refused: this host's data plane did not take the table: the proxy does not answer"
    )
    hosts.follower_plane.broken = False
    hosts.follower.step()  # within the second: not tried again yet
    assert hosts.follower_plane.tables == []
    clock[0] += 1.5
    hosts.follower.step()
    assert hosts.follower_plane.tables == [table]
    wait_for("beta following", lambda: _states(hosts)["beta"] == "follows", 5)


def test_a_deposed_leader_cannot_store_a_table(hosts: Hosts) -> None:
    hosts.plane.apply(_table(("api-1", False)))
    hosts.follower.step()
    first = hosts.follower_plane.tables[-1]
    hosts.leader.stop()  # the lease revoked: alpha leads no more
    wait_for("beta leading", lambda: hosts.standby.leading, 10)
    hosts.publisher.store(_table(("api-9", False)))  # refused by the fence, logged
    assert StoredTable.from_json(hosts.backend.peek("dataplane/table")).table == first
    hosts.follower.step()  # beta leads: it follows nobody
    assert hosts.follower_plane.tables[-1] == first


def test_a_leader_back_for_a_new_term_stores_its_table_again(
    hosts: Hosts, stores: tuple[StateStore, StateStore]
) -> None:
    """alpha stored a table, beta led meanwhile and stored its own; alpha leading again
    with the same table must store it (the key holds beta's), not skip it as unchanged."""
    table = _table(("api-1", False))
    hosts.plane.apply(table)
    hosts.leader.stop()
    wait_for("beta leading", lambda: hosts.standby.leading, 10)
    beta_publisher = TablePublisher(_etcd(stores[1]), hosts.standby, Place("elsewhere", "/b"))
    _etcd(stores[1]).fence_with(hosts.standby.fence)
    beta_table = _table(("api-2", False))
    beta_publisher.store(beta_table)
    assert StoredTable.from_json(hosts.backend.peek("dataplane/table")).table == beta_table
    hosts.standby.stop()
    # alpha's daemon campaigns again (a new lease, a new term) and leads.
    again = Leadership(hosts.backend, "alpha", ttl=2.0, info=dict(hosts.leader.info))
    hosts.backend.fence_with(again.fence)
    again.start()
    try:
        wait_for("alpha leading again", lambda: again.leading, 10)
        hosts.publisher.leadership = again
        hosts.plane.apply(table)
        assert StoredTable.from_json(hosts.backend.peek("dataplane/table")).table == table
    finally:
        again.stop()


def test_a_table_etcd_did_not_take_is_stored_once_it_answers_and_the_drain_waits_meanwhile(
    tmp_path: Path,
) -> None:
    """etcd hung (SIGSTOP) when the leader published a table that drains api-2: the
    followers keep the table before it, so the leader's drain counts every follower in
    flight (also while etcd cannot say who follows); etcd back, the table is stored
    without another change, and the follower takes it. Before, it reached the followers
    only with the next change, and the drain did not wait for them."""
    own = EtcdCluster(tmp_path / "etcd", size=1).start()
    url = own.url(new_namespace())
    pair = StateStore(url), StateStore(url)
    hosts = _hosts(pair, tmp_path, same_place=False, ttl=15.0)
    try:
        hosts.plane.apply(_table(("api-1", False), ("api-2", False)))
        hosts.follower.step()
        wait_for("beta following", lambda: hosts.publisher.lagging() == (), 5)

        own.pause(own.members[0])
        draining = _table(("api-1", False), ("api-2", True))
        try:
            hosts.plane.apply(draining)  # the leader's proxy takes it; etcd does not
            assert hosts.leader_plane.tables[-1] == draining
            assert hosts.plane.backend_stats("api", "api-2") == BackendStats(in_flight=1)
        finally:
            own.resume(own.members[0])

        # The drain asks again: the table is stored (no new change needed; the put that
        # timed out may also have landed once etcd woke: a timeout says nothing) ...
        wait_for(
            "the table stored",
            lambda: (
                hosts.publisher.lagging() == ("beta",)
                and StoredTable.from_json(hosts.backend.peek("dataplane/table")).table == draining
            ),
            10,
        )
        # ... the follower takes it, and the drain stops waiting for it.
        hosts.follower.step()
        assert hosts.follower_plane.tables[-1] == draining
        wait_for(
            "the drain counting nothing",
            lambda: hosts.plane.backend_stats("api", "api-2") == BackendStats(in_flight=0),
            5,
        )
    finally:
        hosts.follower.stop()
        hosts.standby.stop()
        hosts.leader.stop()
        for store in pair:
            store.close()
        own.close()


def test_a_standby_of_the_leaders_place_shares_its_proxy(
    stores: tuple[StateStore, StateStore], tmp_path: Path
) -> None:
    made = _hosts(stores, tmp_path, same_place=True)
    try:
        made.plane.apply(_table(("api-1", True)))
        made.follower.step()
        assert made.follower_plane.tables == []  # the leader drives that proxy
        assert made.publisher.lagging() == ()  # and does not wait on it
        assert _states(made) == {"alpha": "drives", "beta": "shares"}
    finally:
        made.standby.stop()
        made.leader.stop()


def test_two_thousand_routes_fit_in_one_etcd_value() -> None:
    routes = {
        f"svc-{n:04d}": Route(
            f"svc-{n:04d}",
            20000 + n,
            backends=tuple(
                Backend(sha256(f"{n}-{r}".encode()).hexdigest(), f"10.0.{n % 250}.{r}:{30000 + n}")
                for r in range(2)
            ),
        )
        for n in range(2000)
    }
    stored = StoredTable("alpha-1", "alpha", Place("h", "/run"), RoutingTable(routes))
    packed = stored.to_json()
    # etcd refuses requests over 1.5 MiB: Docker's 64-character ids, packed.
    assert len(packed["table"]) < 500_000
    assert StoredTable.from_json(packed) == stored

"""The etcd backend's own guarantees, on the session's real three-member cluster: the
location syntax, optimistic transactions, leadership and the fence of a leader's writes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from etcd_helpers import EtcdCluster, new_namespace, tls_etcd
from listen_ports import free_port
from reconciler_helpers import wait_for

from gitorch.errors import ConfigError
from gitorch.state import RolloutPhase, RolloutRecord, StateStore
from gitorch.state.errors import NotLeader, StateConflict, StateUnavailable
from gitorch.state.etcd.backend import EtcdBackend
from gitorch.state.etcd.client import EtcdClient
from gitorch.state.etcd.election import (
    STANDS_IN_FIELD,
    Leadership,
    let_go_of_member,
    read_leadership,
)
from gitorch.state.location import parse_location


@pytest.fixture
def url(etcd_cluster: EtcdCluster) -> str:
    return etcd_cluster.url(new_namespace())


def backend_of(store: StateStore) -> EtcdBackend:
    assert isinstance(store.backend, EtcdBackend)
    return store.backend


@pytest.fixture
def two(url: str) -> Iterator[tuple[StateStore, StateStore]]:
    """Two stores on one namespace, as two daemons have."""
    first, second = StateStore(url), StateStore(url)
    yield first, second
    first.close()
    second.close()


def test_locations_name_members_namespace_and_certificates() -> None:
    loc = parse_location("etcd://10.0.0.1:2379,10.0.0.2:2380/shop")
    assert loc.etcd is not None and loc.directory is None
    assert loc.etcd.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2380))
    assert loc.etcd.prefix == "/gitorch/shop/"
    assert parse_location("etcd://h:1").etcd.namespace == "default"  # type: ignore[union-attr]
    tls = parse_location("etcds://h:1/x?cacert=/ca.pem&cert=/c.pem&key=/k.pem").etcd
    assert (
        tls is not None
        and tls.tls
        and (tls.cacert, tls.cert, tls.key)
        == (
            "/ca.pem",
            "/c.pem",
            "/k.pem",
        )
    )
    # A process of gitorch's own is given the location with its certificates.
    assert tls.url() == "etcds://h:1/x"
    assert parse_location(tls.url(certificates=True)).etcd == tls
    assert parse_location(".gitorch").directory is not None
    for bad, why in [
        ("etcd://", "no etcd endpoint"),
        ("etcd://h/x", "not HOST:PORT"),
        ("etcd://h:1/Shop", "namespace"),
        ("etcd://h:1/x?user=a", "unknown option"),
        ("etcd://h:1/x?cacert=/ca.pem", "need TLS"),
        ("etcds://h:1/x?cert=/c.pem", "both cert= and key="),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_location(bad)


def test_an_etcd_nobody_answers_is_unavailable_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(StateUnavailable, match="unavailable"):
        StateStore(f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x")
    assert time.monotonic() - started < 5


def test_a_readonly_open_of_an_empty_namespace_creates_nothing(
    url: str, etcd_cluster: EtcdCluster
) -> None:
    with pytest.raises(Exception, match="no gitorch state"):
        StateStore(url, readonly=True)
    namespace = url.rsplit("/", 1)[1]
    assert etcd_cluster.keys(f"/gitorch/{namespace}/") == {}


def test_a_transaction_that_read_what_another_changed_writes_nothing(
    two: tuple[StateStore, StateStore],
) -> None:
    first, second = two
    first.register_node("n1", "process")
    with pytest.raises(StateConflict), first.transaction():
        seen = first.get_node("n1")  # read inside: the commit is conditioned on it
        assert seen is not None
        second.set_draining("n1", True)  # another writer changes it meanwhile
        first.append_event("node.seen", "n1 as it was")
    assert [e.kind for e in first.list_events()] == []
    node = first.get_node("n1")
    assert node is not None and node.draining


def test_atomic_work_is_tried_again_after_a_conflict(
    two: tuple[StateStore, StateStore],
) -> None:
    first, second = two
    first.register_node("n1", "process")
    attempts: list[bool] = []

    def work() -> bool:
        node = first.get_node("n1")  # read inside: the commit is conditioned on it
        assert node is not None
        if not attempts:
            second.set_draining("n1", True)  # another writer, during the first attempt only
        attempts.append(node.draining)
        first.append_event("node.seen", f"draining={node.draining}")
        return node.draining

    assert first.atomic(work) is True  # the second attempt saw the other's write
    assert attempts == [False, True]
    assert [e.message for e in first.list_events()] == ["draining=True"]


def test_a_request_made_during_the_save_does_not_fail_it(
    two: tuple[StateStore, StateStore],
) -> None:
    """The bookkeeping saves a rollout inside its own transaction: an operator's promote
    arriving before that transaction commits stays pending and fails nothing."""
    first, second = two
    record = RolloutRecord(
        service="web",
        revision="a" * 40,
        spec_digest="sha256:x",
        strategy="Canary",
        phase=RolloutPhase.PAUSED,
        spec={"replicas": 2},
    )
    first.upsert_rollout(record)
    with first.transaction():
        saved = first.upsert_rollout(replace(record, message="step done"))
        assert second.request("web", "promote") is True  # the operator, mid-transaction
        first.append_event("rollout.step", "step done")
    assert not saved.promote_requested
    stored = first.get_rollout("web")
    assert stored is not None and stored.message == "step done" and stored.promote_requested


def test_concurrent_small_writes_are_retried_never_lost(
    two: tuple[StateStore, StateStore],
) -> None:
    first, second = two

    def append(store: StateStore, who: str) -> None:
        for i in range(25):
            store.append_event("e", f"{who}-{i}")

    threads = [
        threading.Thread(target=append, args=(store, who))
        for store, who in ((first, "a"), (second, "b"), (first, "c"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    events = first.list_events(limit=None, newest_first=False)
    assert len(events) == 75
    assert [e.id for e in events] == list(range(1, 76))  # one sequence, no id twice


@pytest.fixture
def leaders(url: str) -> Iterator[tuple[StateStore, StateStore, Leadership, Leadership]]:
    stores = StateStore(url), StateStore(url)
    campaigns = [
        Leadership(backend_of(store), name, ttl=2.0)
        for store, name in zip(stores, ("alpha", "beta"), strict=True)
    ]
    for store, campaign in zip(stores, campaigns, strict=True):
        backend_of(store).fence_with(campaign.fence)
        campaign.start()
    yield stores[0], stores[1], campaigns[0], campaigns[1]
    for campaign in campaigns:
        campaign.stop()
    for store in stores:
        store.close()


def test_exactly_one_leads_and_a_standby_cannot_write(
    leaders: tuple[StateStore, StateStore, Leadership, Leadership],
) -> None:
    first, second, alpha, beta = leaders
    assert alpha.leading and not beta.leading  # alpha campaigned first
    assert beta.view().leader == "alpha"
    first.append_event("k", "the leader writes")
    with pytest.raises(NotLeader, match="beta does not lead \\(alpha does\\)"):
        second.append_event("k", "a standby does not")
    assert [e.message for e in first.list_events()] == ["the leader writes"]
    info = read_leadership(backend_of(first))
    assert info["leader"] == "alpha"
    assert [(m["name"], m["role"]) for m in info["members"]] == [
        ("alpha", "leader"),
        ("beta", "standby"),
    ]


def test_a_deposed_leader_can_change_nothing(
    leaders: tuple[StateStore, StateStore, Leadership, Leadership], etcd_cluster: EtcdCluster
) -> None:
    first, second, alpha, beta = leaders
    fence = alpha.fence()
    # alpha "pauses": its lease runs out and beta takes over, while alpha's process still
    # believes in the fence it holds (as a process woken from SIGSTOP would, for a moment).
    alpha._stop.set()  # its campaign thread no longer renews
    alpha.client.revoke(alpha._lease or 0)
    deadline = time.monotonic() + 10
    while not beta.leading:
        assert time.monotonic() < deadline, "beta did not take over"
        time.sleep(0.05)
    backend_of(first).fence_with(lambda: fence)  # the stale fence, not even re-checked
    with (
        pytest.raises(NotLeader, match="alpha no longer leads \\(beta does\\)"),
        first.transaction(),
    ):
        first.record_revision("a" * 40, services=["web"])
        first.append_event("k", "from the deposed leader")
    second.append_event("k", "from the new leader")
    assert [e.message for e in second.list_events()] == ["from the new leader"]
    assert second.list_revisions() == []
    namespace = first.location.etcd.namespace  # type: ignore[union-attr]
    assert not any("revisions/" in key for key in etcd_cluster.keys(f"/gitorch/{namespace}/"))


def test_the_secret_digest_key_is_one_per_namespace(url: str, tmp_path: Path) -> None:
    """Every daemon of a namespace, on any host (its own runtime directory), digests a
    secret with the same key: a new leader elsewhere must not see every secret changed."""
    from gitorch.apply.session import secret_digest_key

    with StateStore(url) as first, StateStore(url) as second:
        assert secret_digest_key(first, tmp_path / "host-a", create=False) is None
        keys = [
            secret_digest_key(store, tmp_path / host, create=True)
            for store, host in ((first, "host-a"), (second, "host-b"))
        ]
        assert keys[0] is not None and len(keys[0]) == 32 and keys[0] == keys[1]
        assert secret_digest_key(second, tmp_path / "host-c", create=False) == keys[0]
    assert not list(tmp_path.glob("host-*/*"))  # nothing written on a host


def test_a_tls_etcd_with_client_certificates(tmp_path: Path) -> None:
    """``etcds://`` with the CA and a client certificate: the store works (and status's
    member health reads over TLS); without the client certificate etcd refuses, and
    gitorch says so instead of hanging."""
    with tls_etcd(tmp_path) as (endpoint, files):
        url = (
            f"etcds://{endpoint}/secure?cacert={files.ca}"
            f"&cert={files.client_cert}&key={files.client_key}"
        )

        def opened() -> StateStore | None:
            try:
                return StateStore(url)
            except StateUnavailable:
                return None

        store = wait_for("the TLS member answering", opened, 20, interval=0.2)
        with store:
            store.append_event("k", "over TLS")
            assert [e.message for e in store.list_events()] == ["over TLS"]
            assert store.audit_chain()[0][0].hash is not None
            health = backend_of(store).client.member_health()
            assert [h["ok"] for h in health] == [True], health
        with pytest.raises(StateUnavailable) as refused:
            StateStore(f"etcds://{endpoint}/secure?cacert={files.ca}")
        assert endpoint in refused.value.message, refused.value.message


def test_a_backoff_record_of_the_key_without_its_template_is_read_and_moved(url: str) -> None:
    """etcd keys written before back-off records were per template
    (``backoff/SERVICE/SLOT``) are read as they are; the slot's next write moves the
    record to its template's key, beside the new one, and a clear of its template
    removes it."""
    from gitorch.state import BackoffRecord
    from gitorch.state.etcd.repos import _plain

    old = BackoffRecord("web", 2, 4, 10.0, 1, template="v1", replica_id="a", reason="exit code 1")
    with StateStore(url) as store:
        etcd = backend_of(store)
        etcd.atomic(lambda: etcd.put("backoff/web/000002", _plain(old)))
        assert store.list_backoff() == [old]
        new = BackoffRecord("web", 2, 1, 20.0, 3, template="v2", replica_id="b", reason="x")
        store.record_backoff(new)
        assert store.list_backoff() == [old, new]
        assert [k for k, _ in etcd.range("backoff/")] == [
            "backoff/web/000002/v1",
            "backoff/web/000002/v2",
        ]
        etcd.atomic(lambda: etcd.put("backoff/web/000005", _plain(replace(old, slot=5))))
        store.clear_backoff("web", 5, "v1")
        assert store.list_backoff() == [old, new]


def test_a_watch_ends_at_a_change_of_its_key_or_after_its_wait(
    two: tuple[StateStore, StateStore],
) -> None:
    """What a follower of the leader's routing table waits on (apply/followers.py)."""
    writer, watcher = backend_of(two[0]), backend_of(two[1])
    writer.atomic(lambda: writer.put("w/table", {"n": 1}))
    first = watcher.revision_of("w/table")
    started = time.monotonic()
    assert watcher.wait_for_change("w/table", first, 0.3) is False
    assert 0.25 < time.monotonic() - started < 3
    # Changed before the watch began: it ends at once.
    writer.atomic(lambda: writer.put("w/table", {"n": 2}))
    assert watcher.wait_for_change("w/table", first, 5) is True
    second = watcher.revision_of("w/table")
    # Changed while watched: it ends as the write lands; another key's write does not.
    writer.atomic(lambda: writer.put("w/other", {"n": 1}))
    later = threading.Timer(0.5, lambda: writer.atomic(lambda: writer.put("w/table", {"n": 3})))
    later.start()
    started = time.monotonic()
    try:
        assert watcher.wait_for_change("w/table", second, 5) is True
    finally:
        later.join()
    assert 0.4 < time.monotonic() - started < 2.5


def test_a_watch_on_a_member_that_does_not_answer_is_unavailable() -> None:
    location = parse_location(f"etcd://127.0.0.1:{free_port()}/x").etcd
    assert location is not None
    with pytest.raises(StateUnavailable, match="did not start a watch"):
        EtcdClient(location).wait_for_change("/gitorch/x/k", 1, 0.3)


def test_a_member_that_does_not_campaign_never_leads_and_is_named_a_stand_in(url: str) -> None:
    with StateStore(url) as store:
        backend = backend_of(store)
        stand_in = Leadership(
            backend,
            "beta.stand-in",
            ttl=2.0,
            info={STANDS_IN_FIELD: "beta"},
            campaign=False,
        )
        stand_in.start()
        try:
            time.sleep(0.5)  # a campaigning member would lead by now: nobody else does
            assert not stand_in.leading and stand_in.view().leader is None
            info = read_leadership(backend)
            assert info["leader"] is None
            assert [(m["name"], m["role"], m["standsInFor"]) for m in info["members"]] == [
                ("beta.stand-in", "stand-in", "beta")
            ]
            alpha = Leadership(backend, "alpha", ttl=2.0)
            alpha.start()
            try:
                assert alpha.leading
                wait_for(
                    "the stand-in seeing alpha lead", lambda: stand_in.view().leader == "alpha", 5
                )
                stand_in.update_info(table={"id": "t1", "error": None})
                wait_for(
                    "its record updated",
                    lambda: any(
                        m.get("table") == {"id": "t1", "error": None} for m in stand_in.members()
                    ),
                    5,
                )
            finally:
                alpha.stop()
        finally:
            stand_in.stop()
        assert read_leadership(backend)["members"] == []  # its lease revoked


def test_a_dead_daemons_lease_is_let_go_and_a_live_ones_is_not(url: str) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    with StateStore(url) as store:
        backend = backend_of(store)
        ghost = Leadership(backend, "ghost", ttl=30.0, info={"pid": dead.pid})
        alive = Leadership(backend, "alive", ttl=30.0)
        ghost.start()  # it leads: campaigned first
        alive.start()
        try:
            assert ghost.leading
            # ghost's process "dies": its campaign stops, its lease is left to expire.
            ghost._stop.set()
            ghost._wake.set()
            assert ghost._thread is not None
            ghost._thread.join(5)
            assert not let_go_of_member(backend, "alive", os.getpid())  # this process runs
            assert not let_go_of_member(backend, "ghost", os.getpid())  # not its pid
            assert let_go_of_member(backend, "ghost", dead.pid)
            # The lease of 30 s is gone now: alive leads at its next campaign.
            wait_for("alive leading", lambda: alive.leading, 5)
            assert [m["name"] for m in read_leadership(backend)["members"]] == ["alive"]
        finally:
            alive.stop()

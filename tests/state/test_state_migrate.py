"""``gitorch state migrate``: a state directory to etcd and back, every record kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from etcd_helpers import EtcdCluster, new_namespace
from reconciler_helpers import gitorch

from gitorch.live.inventory import cluster_name, existing_cluster_name
from gitorch.secrets import load_digest_key
from gitorch.state import (
    AnalysisRunPhase,
    AutoscalerRecord,
    BackoffRecord,
    DaemonLock,
    MeasurementPhase,
    NodeCondition,
    NodePoolRecord,
    RevisionResult,
    RolloutPhase,
    RolloutRecord,
    StateStore,
    TrafficSnapshot,
    VersionTraffic,
)
from gitorch.state.audit_chain import verify
from gitorch.state.migrate import export_state
from gitorch.state.moved import StateMoved

SHA = "a" * 40


def fill(store: StateStore) -> None:
    """One record of every kind (and a second of some), links between them included."""
    first = store.record_revision(SHA, author="Ann", services=["web", "db"], trigger="poll")
    store.finish_revision(
        first.id, RevisionResult.FAILED, reason="db", service_results={"db": RevisionResult.FAILED}
    )
    store.record_revision("b" * 40, services=["web"])
    store.upsert_rollout(
        RolloutRecord(
            "web", SHA, "sha256:new", "Canary", RolloutPhase.PAUSED, {"replicas": 2}, step=1
        )
    )
    store.request("web", "promote")
    store.record_applied("Service", "web", SHA, "sha256:new", {"spec": {"replicas": 2}})
    store.allocate_port("n1", "web-1/http")
    store.register_node("n1", "process", labels={"zone": "a"})
    store.update_node_condition("n1", NodeCondition.READY, at=5.0)
    store.record_backoff(BackoffRecord("web", 1, 2, 3.0, 1, template="t", reason="exit code 1"))
    run = store.open_analysis_run("web", SHA, "step-1", 1.5, at=2.0)
    store.add_measurement(
        "web", SHA, MeasurementPhase.SUCCESSFUL, analysis="step-1", value={"r": 1}, run_id=run.id
    )
    store.set_analysis_window(run.id, {"epoch": "e1", "versions": []})
    store.conclude_analysis_run(run.id, AnalysisRunPhase.SUCCESSFUL, "1/1", at=3.0)
    store.bind_volume("data", "n1", {"kind": "Volume", "spec": {}}, at=4.0)
    store.volume_created("data", "n1", at=4.5)
    store.bind_volume("kept", "n1", {"kind": "Volume", "spec": {}}, at=4.0)
    store.release_volume("kept", at=6.0)
    store.replace_traffic(
        [
            TrafficSnapshot(
                "web", 9.0, 1.0, "builtin", (VersionTraffic("v1", SHA, 100, 2, 10, 0, 1),)
            )
        ]
    )
    store.append_event("revision.started", "applying", revision=SHA, data={"k": [1, 2]})
    store.append_event("service.pruned", "gone", service="old")
    store.save_autoscaler(
        AutoscalerRecord(
            "web", 3, 10.0, changed_at=9.0, reason="cpu", metrics=({"metric": "cpu"},),
            memory={"events": [[9.0, 1]]}, usage={"cpu": {"total": 1.0}},
        )
    )  # fmt: skip
    store.save_node_pool(
        NodePoolRecord(
            "workers", nodes=({"name": "workers-1a2b3c", "endpoint": "tcp://10.0.0.7:2376",
                               "state": "ready", "tls": {"caCert": "ca.pem", "verify": False}},),
            pending_since=8.0, last={"action": "create", "node": "workers-1a2b3c"}, updated_at=10.0,
        )
    )  # fmt: skip


def comparable(store: StateStore) -> object:
    snapshot = export_state(store, None)
    from dataclasses import replace

    return replace(snapshot, rollouts=[replace(r, updated_at=0.0) for r in snapshot.rollouts])


def test_a_directory_moves_to_etcd_and_back_whole(
    tmp_path: Path, etcd_cluster: EtcdCluster
) -> None:
    source = tmp_path / "state"
    with StateStore(source) as store:
        fill(store)
        original = comparable(store)
        kept = export_state(store, None)
    cluster = cluster_name(source)
    digest_key = load_digest_key(source, create=True)  # a daemon made it for its secrets
    url = etcd_cluster.url(new_namespace())

    done = gitorch("state", "migrate", "--from", str(source), "--to", url, cwd=tmp_path)
    assert done.code == 0, done.stderr
    out = done.stdout
    assert "revisions: 2" in out and "audit: 2" in out and f"--runtime-dir {source}" in out
    with StateStore(url, readonly=True) as moved:
        assert comparable(moved) == original
        assert moved.get_rollout("web").promote_requested  # type: ignore[union-attr]
        # The sequences go on after the copied ids.
    with StateStore(url) as moved:
        assert moved.append_event("k", "next").id == 3
        assert moved.record_revision("c" * 40).id == 3
        # The audit chain came with its links, and goes on from the copied head.
        entries, highest = moved.audit_chain()
        assert verify(entries, highest_id=highest).intact and highest == 3
        assert entries[2].prev_hash == entries[1].hash
    from gitorch.state.etcd.backend import EtcdBackend

    with StateStore(url, readonly=True) as moved:
        assert isinstance(moved.backend, EtcdBackend)
        assert moved.backend.cluster_name() == cluster  # the replicas' label carried over
        # So did the key of the secret digests: with a new one, the first daemon saw every
        # secret as rotated and rolled every service that uses one.
        assert moved.backend.secret_digest_key(create=False) == digest_key
    assert "the key of secret digests carried over" in out

    back = tmp_path / "back"
    done = gitorch("state", "migrate", "--from", url, "--to", str(back), cwd=tmp_path)
    assert done.code == 0, done.stderr
    with StateStore(back, readonly=True) as returned:
        again = export_state(returned, None)
        assert len(again.audit) == 3 and len(again.revisions) == 3
        entries, highest = returned.audit_chain()
        assert verify(entries, highest_id=highest).intact and highest == 3
        assert again.volumes == kept.volumes and len(kept.volumes) == 2
        assert again.analysis_runs == kept.analysis_runs
        assert again.analysis_runs[0].window_figures == {"epoch": "e1", "versions": []}
    assert existing_cluster_name(back) == cluster
    assert load_digest_key(back, create=False) == digest_key
    assert (back / "secret-digest.key").stat().st_mode & 0o777 == 0o600


def test_migrate_refuses_a_target_with_state_and_a_running_daemon(
    tmp_path: Path, etcd_cluster: EtcdCluster
) -> None:
    source = tmp_path / "state"
    with StateStore(source) as store:
        fill(store)
    url = etcd_cluster.url(new_namespace())
    with StateStore(url) as other:
        other.append_event("k", "another cluster's")
    done = gitorch("state", "migrate", "--from", str(source), "--to", url, cwd=tmp_path)
    assert done.code == 1 and "already holds gitorch state" in done.stderr, done.stderr
    with DaemonLock(source):
        fresh = etcd_cluster.url(new_namespace())
        done = gitorch("state", "migrate", "--from", str(source), "--to", fresh, cwd=tmp_path)
        assert done.code == 1 and "in use by another gitorch daemon" in done.stderr, done.stderr


def test_the_directory_left_refuses_until_the_state_moves_back_into_it(
    tmp_path: Path, etcd_cluster: EtcdCluster
) -> None:
    """After a move to etcd the directory's database is a stale copy: a daemon or command
    given it would act on old records beside the etcd daemons. It refuses, naming where the
    state went, until the state is migrated back into it (the stale copy set aside)."""
    source = tmp_path / "state"
    with StateStore(source) as store:
        fill(store)
    url = etcd_cluster.url(new_namespace())
    done = gitorch("state", "migrate", "--from", str(source), "--to", url, cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert "marked as moved" in " ".join(done.stdout.split())

    with pytest.raises(StateMoved, match=f"moved to {re.escape(url)}"):
        StateStore(source, readonly=True)
    status = gitorch("status", "--state", str(source), cwd=tmp_path)
    assert status.code == 1, status.stdout
    assert f"was moved to {url}" in status.stderr and f"--runtime-dir {source}" in status.stderr
    again = gitorch("state", "migrate", "--from", str(source), "--to", url, cwd=tmp_path)
    assert again.code == 1 and "was moved to" in again.stderr, again.stderr

    with StateStore(url) as moved:  # the etcd daemons go on
        moved.record_revision("c" * 40, services=["web"])
    back = gitorch("state", "migrate", "--from", url, "--to", str(source), cwd=tmp_path)
    assert back.code == 0, back.stderr
    (aside,) = source.glob("stale-state-*")
    assert (aside / "state.db").is_file() and "kept in" in back.stdout
    assert not (source / "moved-to.json").exists()
    with StateStore(source, readonly=True) as returned:
        assert len(export_state(returned, None).revisions) == 3  # with the etcd daemons' one


def test_an_unreadable_marker_still_refuses(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    (tmp_path / "moved-to.json").write_text("{not json")
    with pytest.raises(StateMoved, match="its marker cannot be read"):
        StateStore(tmp_path, readonly=True)

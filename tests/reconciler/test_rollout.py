"""Zero-downtime rolling updates through the daemon, on the process driver and on Docker.

Issue 5, "What must hold": 3 replicas behind the built-in balancer, a client hammering
the endpoint over keep-alive connections, a commit that changes the version: not one
request fails, every replica ends on the new revision, the old ones are gone, and the
history records both revisions as succeeded with their authors.
"""

from __future__ import annotations

import pytest
from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    docker_service,
    get_version,
    gitorch,
    instance_ids,
    process_service,
    wait_for,
)

# Traffic through a rolling update: the store keeps what any pass keeps.
pytestmark = pytest.mark.store_incidental

#: Bound of a 3-replica rollout with 1 surge and 1 s probes; typical is 3-8 s.
ROLLOUT_TIMEOUT = 45


def _zero_downtime(cluster: Cluster, first: str, second: str, old: str, new: str) -> None:
    """Deploy ``first``, then roll to ``second`` under load; ``old``/``new``: versions."""
    port = cluster.port
    sha1 = commit(
        cluster.repo, {"api.yaml": first}, "api v1", author="Ada Lovelace <ada@example.com>"
    )
    daemon = cluster.daemon()
    wait_for(
        "v1 converged",
        lambda: converged(daemon.service("api"), sha1, 3),
        ROLLOUT_TIMEOUT,
        describe=lambda: str(daemon.status()) + daemon.log_tail(),
    )
    wait_for("the endpoint serving v1", lambda: get_version(port) == old, 10)
    before = instance_ids(daemon.service("api"))

    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        sha2 = commit(
            cluster.repo, {"api.yaml": second}, "api v2", author="Grace Hopper <grace@example.com>"
        )
        wait_for(
            "v2 converged",
            lambda: converged(daemon.service("api"), sha2, 3),
            ROLLOUT_TIMEOUT,
            describe=lambda: str(daemon.status()) + daemon.log_tail(),
        )
        # Keep hammering a little after the last old replica left.
        settled_at = load.total
        wait_for("load after the rollout", lambda: load.total > settled_at + 50, 10)
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)
    assert load.versions[old] > 0 and load.versions[new] > 0, load.versions
    assert load.total > 300, load.total

    svc = daemon.service("api")
    assert svc is not None
    assert svc["replicas"]["updated"] == 3 and svc["replicas"]["ready"] == 3
    after = instance_ids(svc)
    assert not (before & after), "an old replica survived the rollout"
    assert svc["revision"] == sha2
    assert get_version(port) == new

    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert history.code == 0, history.stderr
    by_sha = {h["revision"]: h for h in history.json()}
    assert by_sha[sha1]["result"] == "succeeded", by_sha[sha1]
    assert by_sha[sha2]["result"] == "succeeded", by_sha[sha2]
    assert by_sha[sha1]["author"] == "Ada Lovelace <ada@example.com>"
    assert by_sha[sha2]["author"] == "Grace Hopper <grace@example.com>"
    assert [h["revision"] for h in history.json()][:2] == [sha2, sha1]  # newest first


# On both stores: the same rollout with the state in SQLite and in etcd.
@pytest.mark.parametrize("cluster", ["sqlite", "etcd"], indirect=True)
def test_zero_downtime_rollout_process(cluster: Cluster) -> None:
    port = cluster.port
    _zero_downtime(
        cluster,
        process_service("api", port=port, version="1"),
        process_service("api", port=port, version="2"),
        "1",
        "2",
    )


@pytest.mark.docker
def test_zero_downtime_rollout_docker(docker_cluster: Cluster) -> None:
    port = docker_cluster.port
    _zero_downtime(
        docker_cluster,
        docker_service("api", port=port, image="gitorch-example/api:1"),
        docker_service("api", port=port, image="gitorch-example/api:2"),
        "1",
        "2",
    )

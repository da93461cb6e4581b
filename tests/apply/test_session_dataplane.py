"""The session's data plane with etcd state: opened once by the leader, however many of
the daemon's threads ask for it at the same moment (the pass, the API, the traffic meter)."""

from __future__ import annotations

import threading
from pathlib import Path

from data_plane_helpers import stop_data_plane
from etcd_helpers import EtcdCluster, new_namespace

from gitorch.apply.session import Session, SessionOptions
from gitorch.state.location import parse_location


def test_threads_asking_at_once_start_one_proxy(tmp_path: Path, etcd_cluster: EtcdCluster) -> None:
    runtime_dir = tmp_path / "runtime"
    options = SessionOptions(
        state_dir=runtime_dir,
        state=parse_location(etcd_cluster.url(new_namespace())),
        runtime="process",
        data_plane_outlives=True,  # as the daemon: `gitorch proxy` is started
    )
    session = Session(options)
    try:
        assert session.leading  # the only member: it leads from the start
        start = threading.Barrier(4)
        planes: list[object] = []

        def ask() -> None:
            start.wait()
            planes.append(session.dataplane)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(planes) == 4 and all(p is planes[0] for p in planes), planes
        log = (runtime_dir / "proxy" / "proxy.log").read_text()
        # One proxy started; a second would have taken over from the first.
        assert log.count(" serving (gitorch") == 1, log
        assert "took over" not in log, log
    finally:
        session.close()
        stop_data_plane(runtime_dir)

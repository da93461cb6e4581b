"""The example apps under 100 concurrent clients, run as the example repo runs them.

Each app is started by the process driver with the limits examples/repo gives it
(``limits: {cpu: 500m, memory: 64Mi}``), so it runs in its cgroup exactly as under
``gitorch daemon``. Two defects of the first shop are checked: a listen backlog of 5
(SYNs dropped under 20 clients, so clients retried after a second) and threads that could
not start under a 64 MiB RLIMIT_AS. The throughput figure (``hey -c 100``) is in the
report of issue 12, not asserted here.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from shop_helpers import REPO_ROOT, wait_for_http

from gitorch.errors import InstanceNotFound
from gitorch.runtime.base import LABEL_SERVICE, Instance, PortRequest, ReplicaSpec
from gitorch.runtime.process import ProcessRuntime

CLIENTS = 100
ROUNDS = 5
MI = 2**20


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime("node-ex", tmp_path / "state", workdir=REPO_ROOT)
    yield rt
    for instance in rt.list_instances("examples-load"):
        with contextlib.suppress(InstanceNotFound):
            rt.remove(instance.id)


def start(runtime: ProcessRuntime, app: str) -> Instance:
    spec = ReplicaSpec(
        name=f"examples-load-{app}-{uuid.uuid4().hex[:6]}",
        image=None,
        command=("python3", f"examples/apps/{app}/app.py"),
        env={"VERSION": "1", "HOST": "127.0.0.1"},
        ports=(PortRequest("http", 8080),),
        cpu_limit=0.5,
        memory_limit=64 * MI,
        labels={LABEL_SERVICE: app},
    )
    instance = runtime.create(spec, "examples-load")
    wait_for_http(f"http://{instance.address()}/healthz", deadline_s=20)
    return instance


def backlog_of(port: int) -> int:
    """The listen backlog of the socket on ``port`` (``ss`` shows it as Send-Q)."""
    done = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    (line,) = done.stdout.splitlines()
    return int(line.split()[2])


def burst(host: str, port: int) -> tuple[list[str], list[float]]:
    """CLIENTS connections at the same instant, each one GET /; failures and latencies."""
    gate = threading.Barrier(CLIENTS)
    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        gate.wait()
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/")
            status = conn.getresponse().status
            conn.close()
            outcome = "" if status == 200 else f"HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            latencies.append(time.monotonic() - started)
            if outcome:
                failures.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures, latencies


@pytest.mark.parametrize("app", ["api", "web"])
def test_an_app_serves_100_concurrent_clients_inside_its_limits(
    runtime: ProcessRuntime, app: str
) -> None:
    instance = start(runtime, app)
    binding = instance.ports[0]
    assert backlog_of(binding.host_port) >= 128

    slowest = 0.0
    for _ in range(ROUNDS):
        failures, latencies = burst(binding.host_ip, binding.host_port)
        assert failures == []
        slowest = max(slowest, *latencies)

    # A dropped SYN is retried after 1 s: a burst that fits the backlog never waits that
    # long (measured: ~0.3 s for the slowest of 100 under the 500m cpu limit).
    assert slowest < 1.0, f"the slowest of {CLIENTS} concurrent requests took {slowest:.2f}s"
    tree = runtime.cgroups
    group = runtime.cgroup_of(instance.id)
    assert tree is not None and group is not None
    peak = tree.memory_peak(group)
    assert peak is not None and peak < 40 * MI, f"peak memory {peak / MI:.1f} MiB of 64"
    assert tree.oom_kills(group) == 0
    assert "Traceback" not in runtime.logs(instance.id, tail=1000)

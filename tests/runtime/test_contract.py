"""The Runtime contract: one behavioural suite, run against every driver.

Each test gets ``runtime_kit`` (conftest.py; the kit is ``runtime_helpers.RuntimeKit``) for
the process and the docker driver, with a cluster name of its own; every instance is
removed at teardown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from docker_address_helpers import local_docker_publish_host
from runtime_helpers import RuntimeKit

from gitorch.errors import InstanceNotFound
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    LABEL_NODE,
    Instance,
    InstanceState,
    Probe,
    Runtime,
)

#: The container port every http workload declares (see runtime_helpers.RuntimeKit.spec).
HTTP_PORT = 8080

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def http_probe() -> Probe:
    return Probe(http_path="/healthz", port=HTTP_PORT, timeout_seconds=1.0)


def wait_ready(runtime: Runtime, instance: Instance) -> None:
    wait_for("the http probe to pass", lambda: runtime.probe(instance, http_probe()).ok)


def wait_exited(runtime: Runtime, instance_id: str, timeout: float = 10.0) -> Instance:
    def exited() -> Instance | None:
        current = runtime.inspect(instance_id)
        return current if current.state is InstanceState.EXITED else None

    return wait_for("the instance to exit", exited, timeout)


def test_node_info_reports_capacity(runtime_kit: RuntimeKit) -> None:
    info = runtime_kit.runtime.node_info()
    assert info.ready, info.message
    assert info.driver == runtime_kit.driver
    assert info.name == "node-test"
    assert info.cpu_cores >= 1
    assert info.memory_bytes > 64 * 2**20


def test_create_runs_and_becomes_ready(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    spec = runtime_kit.spec("http")
    instance = runtime.create(spec, runtime_kit.cluster)

    assert instance.state is InstanceState.RUNNING
    assert instance.name == spec.name
    assert instance.node == "node-test"
    # The process driver binds on 127.0.0.1; a local Docker engine publishes on its
    # bridge's gateway when this host owns it (docker_address_helpers).
    host = local_docker_publish_host() if runtime_kit.driver == "docker" else "127.0.0.1"
    assert [(b.name, b.container_port, b.host_ip) for b in instance.ports] == [
        ("http", HTTP_PORT, host)
    ]
    assert instance.ports[0].host_port > 0
    assert instance.address("http") == f"{host}:{instance.ports[0].host_port}"
    assert instance.started_at is not None and abs(instance.started_at - time.time()) < 60
    wait_ready(runtime, instance)
    result = runtime.probe(instance, http_probe())
    assert result.message == "HTTP 200"
    assert 0 <= result.duration_seconds < 1.0


def test_tcp_probe_follows_the_listener(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("http"), runtime_kit.cluster)
    tcp = Probe(tcp=True, port=HTTP_PORT, timeout_seconds=1.0)
    wait_for("the tcp probe to pass", lambda: runtime.probe(instance, tcp).ok)

    runtime.stop(instance.id, grace_seconds=5)
    failed = runtime.probe(instance, tcp)
    assert not failed.ok
    assert failed.message


def test_exec_probe_runs_in_the_replica(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    # The "ok" command only passes with the replica's env (PORT is set there).
    instance = runtime.create(runtime_kit.spec("http"), runtime_kit.cluster)
    passing = runtime.probe(instance, Probe(exec_command=runtime_kit.exec_command(ok=True)))
    failing = runtime.probe(instance, Probe(exec_command=runtime_kit.exec_command(ok=False)))
    assert passing.ok, passing.message
    assert not failing.ok
    assert failing.message == "exit 1"


def test_stop_gives_a_graceful_replica_its_grace(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(
        runtime_kit.spec("graceful", env={"CLEANUP_SECONDS": "0.5"}), runtime_kit.cluster
    )
    wait_for("the app to start", lambda: "graceful app started" in runtime.logs(instance.id))

    started = time.monotonic()
    runtime.stop(instance.id, grace_seconds=5)
    took = time.monotonic() - started

    # Its 0.5 s cleanup ran to the end, well before the 5 s grace ran out.
    assert 0.4 <= took < 4.0, took
    stopped = runtime.inspect(instance.id)
    assert stopped.state is InstanceState.EXITED
    assert stopped.exit_code == 0
    logs = runtime.logs(instance.id)
    assert "got SIGTERM, cleaning up" in logs
    assert "clean exit" in logs


def test_stop_kills_a_replica_that_ignores_sigterm_after_the_grace(
    runtime_kit: RuntimeKit,
) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("stubborn"), runtime_kit.cluster)
    wait_for("the app to start", lambda: "stubborn app started" in runtime.logs(instance.id))

    started = time.monotonic()
    runtime.stop(instance.id, grace_seconds=1)
    took = time.monotonic() - started

    assert 0.9 <= took < 3.0, took
    stopped = runtime.inspect(instance.id)
    assert stopped.state is InstanceState.EXITED
    assert stopped.exit_code == 137  # 128 + SIGKILL, as a shell (and Docker) reports it

    # Stopping a stopped instance is fine and quick.
    started = time.monotonic()
    runtime.stop(instance.id, grace_seconds=5)
    assert time.monotonic() - started < 2.0


def test_remove_then_inspect_is_instance_not_found(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)

    runtime.remove(instance.id)  # a running one is killed first

    with pytest.raises(InstanceNotFound):
        runtime.inspect(instance.id)
    assert runtime.list_instances(runtime_kit.cluster) == []
    with pytest.raises(InstanceNotFound):
        runtime.logs(instance.id)
    with pytest.raises(InstanceNotFound):
        runtime.remove(instance.id)


def test_labels_round_trip(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    spec = runtime_kit.spec("graceful")
    created = runtime.create(spec, runtime_kit.cluster)

    for instance in (created, runtime.inspect(created.id)):
        for key, value in spec.labels.items():
            assert instance.labels[key] == value
        assert instance.labels[LABEL_CLUSTER] == runtime_kit.cluster
        assert instance.labels[LABEL_NODE] == "node-test"


def test_a_new_runtime_object_adopts_every_instance(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    web = runtime.create(runtime_kit.spec("http"), runtime_kit.cluster)
    worker = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    done = runtime.create(runtime_kit.spec("exit3"), runtime_kit.cluster)
    wait_exited(runtime, done.id)

    fresh = runtime_kit.new_runtime()
    assert fresh is not runtime
    adopted = {inst.id: inst for inst in fresh.list_instances(runtime_kit.cluster)}

    assert set(adopted) == {web.id, worker.id, done.id}
    for before in (web, worker):
        after = adopted[before.id]
        assert after.name == before.name
        assert after.state is InstanceState.RUNNING
        assert dict(after.labels) == dict(before.labels)
        assert after.ports == before.ports
    assert adopted[done.id].state is InstanceState.EXITED
    assert adopted[done.id].exit_code == 3
    # The adopted instance is fully usable through the new object.
    wait_ready(fresh, adopted[web.id])
    fresh.stop(worker.id, grace_seconds=5)
    assert fresh.inspect(worker.id).exit_code == 0


def test_clusters_do_not_see_each_other(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    assert runtime.list_instances(runtime_kit.cluster + "-other") == []


def test_logs_hold_what_the_app_printed(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("http"), runtime_kit.cluster)
    port = HTTP_PORT if runtime_kit.driver == "docker" else instance.ports[0].host_port
    line = f"http app listening on {port}"
    wait_for("the app's first line", lambda: line in runtime.logs(instance.id))
    wait_ready(runtime, instance)  # busybox httpd -v / http.server log each request
    assert runtime.logs(instance.id, tail=1).count("\n") <= 1  # tail counts from the end


def test_usage_is_measured(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("http"), runtime_kit.cluster)
    wait_ready(runtime, instance)

    usage = runtime.usage(instance.id)

    assert usage.cpu_percent >= 0.0
    assert usage.memory_bytes > 0


def test_usage_tells_a_busy_replica_from_an_idle_one(runtime_kit: RuntimeKit) -> None:
    # What the autoscaler's cpu metric reads: Docker's stats, the process driver's ticks.
    runtime = runtime_kit.runtime
    busy = runtime.create(runtime_kit.shell("busy", "while :; do :; done"), runtime_kit.cluster)
    idle = runtime.create(runtime_kit.shell("idle", "sleep 300"), runtime_kit.cluster)
    for instance in (busy, idle):
        runtime.usage(instance.id)  # the process driver's first sample
    time.sleep(1.0)
    busy_usage, idle_usage = runtime.usage(busy.id), runtime.usage(idle.id)
    # A busy loop gets a full core on an idle machine, a share of one on a busy one.
    assert busy_usage.cpu_percent > 5.0, busy_usage
    assert idle_usage.cpu_percent < 2.0, idle_usage


def test_a_replica_that_exits_shows_exited_with_its_code(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("exit3"), runtime_kit.cluster)

    exited = wait_exited(runtime, instance.id)

    assert exited.exit_code == 3
    assert exited.exit_reason == "exit 3"
    assert "exiting with 3" in runtime.logs(instance.id)
    listed = runtime.list_instances(runtime_kit.cluster)
    assert [(i.id, i.state, i.exit_code) for i in listed] == [
        (instance.id, InstanceState.EXITED, 3)
    ]


def test_a_running_replica_has_no_exit_reason(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    assert runtime.inspect(instance.id).exit_reason is None


def test_remove_keeps_the_output_and_how_it_ended(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("exit3"), runtime_kit.cluster)
    wait_exited(runtime, instance.id)
    assert runtime.retained_logs(runtime_kit.cluster, "exit3") == []

    runtime.remove(instance.id)

    # Read back through a brand-new runtime object: it is on disk, not in memory.
    (kept,) = runtime_kit.new_runtime().retained_logs(runtime_kit.cluster, "exit3")
    assert (kept.name, kept.service, kept.node, kept.instance_id) == (
        instance.name,
        "exit3",
        "node-test",
        instance.id,
    )
    assert kept.replica == instance.labels["dev.gitorch.replica"]
    assert kept.revision == "0123abc"
    assert "exiting with 3" in kept.output
    assert (kept.exit_code, kept.exit_reason) == (3, "exit 3")
    assert kept.started_at is not None and kept.finished_at is not None
    assert kept.started_at - 1 <= kept.finished_at <= kept.removed_at <= time.time()


def test_a_replica_removed_while_running_is_kept_as_killed(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    wait_for("its first line", lambda: "graceful app started" in runtime.logs(instance.id))

    runtime.remove(instance.id)

    (kept,) = runtime.retained_logs(runtime_kit.cluster, "graceful")
    assert kept.output == "graceful app started\n"
    assert (kept.exit_code, kept.exit_reason) == (137, "signal 9")


def test_follow_streams_new_lines_until_the_replica_exits(runtime_kit: RuntimeKit) -> None:
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    wait_for("its first line", lambda: "graceful app started" in runtime.logs(instance.id))
    lines = runtime.follow_logs(instance.id, tail=5)
    assert next(lines) == "graceful app started"

    runtime.stop(instance.id, 5.0)

    assert list(lines) == ["got SIGTERM, cleaning up", "clean exit"]  # then it ends
    with pytest.raises(InstanceNotFound):
        runtime.follow_logs("no-such-instance-0")


def test_follow_ends_soon_after_its_stop_is_set_while_the_replica_is_quiet(
    runtime_kit: RuntimeKit,
) -> None:
    """A reader on another thread (the API's follower of a client that left) stops a
    follow of a replica that writes nothing: the read blocked in the engine ends too."""
    runtime = runtime_kit.runtime
    instance = runtime.create(runtime_kit.spec("graceful"), runtime_kit.cluster)
    wait_for("its first line", lambda: "graceful app started" in runtime.logs(instance.id))
    stop = threading.Event()
    lines = runtime.follow_logs(instance.id, tail=5, stop=stop)
    assert next(lines) == "graceful app started"
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(lines), daemon=True)
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive()  # nothing written, nothing ended: it waits for more

    stop.set()
    reader.join(timeout=3.0)

    assert not reader.is_alive(), "the follow went on after its stop was set"
    assert rest == []
    assert runtime.inspect(instance.id).state is InstanceState.RUNNING  # the replica runs on

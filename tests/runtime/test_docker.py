"""Docker-only behaviour: failures translated into gitorch errors, limits, endpoints.

The engine-loss tests start a private dockerd of their own (``private_dockerd``: its own
socket, data root, exec root, containerd and bridge; no iptables) so that killing or
pausing it never touches the main engine the rest of the suite uses.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_address_helpers import (
    bridge_interface_address,
    bridge_network,
    local_docker_publish_host,
)
from private_dockerd import EngineError, PrivateEngine

import gitorch.runtime.docker as docker_module
from gitorch.errors import (
    ConfigError,
    EngineUnavailable,
    ImageNotFound,
    InstanceNotFound,
    PortInUse,
)
from gitorch.runtime import docker_available, open_runtime
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    InstanceState,
    PortRequest,
    ReplicaSpec,
)
from gitorch.runtime.docker import DockerRuntime, DockerTLS

pytestmark = pytest.mark.docker

MAIN = "unix:///var/run/docker.sock"


def _spec(name: str, image: str, **kw: Any) -> ReplicaSpec:
    return ReplicaSpec(name=name, image=image, labels={"dev.gitorch.service": "t"}, **kw)


@pytest.fixture
def main_runtime(test_images: dict[str, str], cluster: str) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime("node-test", MAIN, timeout=15.0)
    yield runtime
    for instance in runtime.list_instances(cluster):
        runtime.remove(instance.id)


# -- images, ports, limits -------------------------------------------------------------


def test_missing_image_is_image_not_found_quickly(
    main_runtime: DockerRuntime, cluster: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ImageNotFound, match="gitorch-test/no-such-image:9"):
        main_runtime.create(_spec(f"{cluster}-x", "gitorch-test/no-such-image:9"), cluster)
    # No registry here: the pull attempt fails at once instead of hanging.
    assert time.monotonic() - started < 5.0
    assert main_runtime.list_instances(cluster) == []


def test_missing_image_without_pull(test_images: dict[str, str], cluster: str) -> None:
    runtime = DockerRuntime("node-test", MAIN, pull=False)
    with pytest.raises(ImageNotFound, match="pull disabled"):
        runtime.create(_spec(f"{cluster}-x", "gitorch-test/no-such-image:9"), cluster)


def _listening_socket() -> socket.socket:
    """A port taken on every address of this host (the runtime publishes on the bridge's
    gateway, where a port held on 127.0.0.1 alone would not be in the way)."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", 0))  # noqa: S104 (a test's port, closed at once)
    sock.listen()
    return sock


def test_taken_host_port_is_port_in_use(
    main_runtime: DockerRuntime, test_images: dict[str, str], cluster: str
) -> None:
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        spec = _spec(
            f"{cluster}-web",
            test_images["http"],
            ports=(PortRequest("http", 8080, host_port=port),),
        )
        with pytest.raises(PortInUse, match=str(port)):
            main_runtime.create(spec, cluster)
    # The half-made container is not left behind.
    assert main_runtime.list_instances(cluster) == []


def test_pinned_free_host_port_is_used(
    main_runtime: DockerRuntime, docker_client: Any, test_images: dict[str, str], cluster: str
) -> None:
    with _listening_socket() as probe_sock:
        port = probe_sock.getsockname()[1]  # free once closed
    spec = _spec(
        f"{cluster}-web", test_images["http"], ports=(PortRequest("http", 8080, host_port=port),)
    )
    instance = main_runtime.create(spec, cluster)
    assert instance.ports[0].host_port == port
    # Published on the bridge's gateway (this host owns it): reached from here through the
    # kernel's NAT, not through a docker-proxy process as 127.0.0.1 would be.
    gateway = local_docker_publish_host()
    assert gateway != "127.0.0.1", "this host owns the engine's bridge: ports go on its gateway"
    assert instance.address("http") == f"{gateway}:{port}"
    assert _first_answer(f"http://{gateway}:{port}/") == 200


def _first_answer(url: str, within: float = 10.0) -> int:
    """The status of ``url``'s first answer: a container just started may not listen yet
    (its server starts a moment after the engine's start returns), so a refusal is asked
    again until ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(url, timeout=within) as answer:
                return int(answer.status)
        except urllib.error.URLError as exc:
            refused = isinstance(exc.reason, ConnectionRefusedError)
            if not refused or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_an_engine_whose_bridge_is_elsewhere_publishes_on_loopback(
    monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    """Rootless Docker, Docker Desktop, an engine in another network namespace: the
    gateway is not this host's, so ports stay on 127.0.0.1."""
    monkeypatch.setattr(docker_module, "_owned_here", lambda address: False)
    runtime = DockerRuntime("n1", "unix:///var/run/docker.sock")
    assert runtime._publish_address(docker_client.api) == "127.0.0.1"
    given = DockerRuntime("n1", "unix:///var/run/docker.sock", address="10.1.2.3")
    assert given._publish_address(docker_client.api) == "10.1.2.3"  # an address given wins


def test_a_bridge_without_a_stated_gateway_publishes_on_its_interface_address(
    monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    """An engine's first start leaves the default bridge's IPAM gateway unstated (Docker
    20.10; CI's fresh engine): the driver takes the address of the bridge's interface,
    as ``ip addr`` shows it, not 127.0.0.1 (CI: the gateway was silently not used)."""
    network = bridge_network()
    interface = network["Options"]["com.docker.network.bridge.name"]
    expected = bridge_interface_address(interface)
    assert expected is not None, f"the engine's bridge {interface} has no IPv4 address here"
    unstated = {
        **network,
        "IPAM": {
            **network["IPAM"],
            "Config": [
                {k: v for k, v in c.items() if k != "Gateway"} for c in network["IPAM"]["Config"]
            ],
        },
    }
    monkeypatch.setattr(docker_client.api, "inspect_network", lambda name: unstated)
    runtime = DockerRuntime("n1", "unix:///var/run/docker.sock")
    assert runtime._publish_address(docker_client.api) == expected
    # An interface whose address is outside the network's subnet is not the gateway.
    elsewhere = {
        **unstated,
        "IPAM": {**unstated["IPAM"], "Config": [{"Subnet": "198.51.100.0/24"}]},
    }
    monkeypatch.setattr(docker_client.api, "inspect_network", lambda name: elsewhere)
    fresh = DockerRuntime("n1", "unix:///var/run/docker.sock")
    assert fresh._publish_address(docker_client.api) == "127.0.0.1"


def test_limits_are_enforced(
    main_runtime: DockerRuntime,
    docker_client: Any,
    test_images: dict[str, str],
    cluster: str,
) -> None:
    limits = {"cpu_limit": 0.5, "memory_limit": 32 * 2**20}
    running = main_runtime.create(
        _spec(f"{cluster}-limited", test_images["stubborn"], **limits), cluster
    )
    host_config = docker_client.api.inspect_container(running.id)["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 32 * 2**20
    assert host_config["RestartPolicy"]["Name"] == "no"
    assert host_config["Init"] is True

    # Touching 64 MiB under a 32 MiB limit (no swap allowed): the kernel OOM-kills it; the
    # same command under a 128 MiB limit succeeds, so the limit is what killed it.
    dd = ("dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
    hog = main_runtime.create(
        _spec(f"{cluster}-hog", test_images["stubborn"], command=dd, **limits), cluster
    )
    roomy = main_runtime.create(
        _spec(f"{cluster}-roomy", test_images["stubborn"], command=dd, memory_limit=128 * 2**20),
        cluster,
    )
    assert wait_exit_code(main_runtime, hog.id) == 137
    assert wait_exit_code(main_runtime, roomy.id) == 0
    # Docker sets State.OOMKilled from a cgroup event that may land a moment after the
    # exit (until then the instance reads "signal 9"), and on cgroup v1 it can lose the flag
    # altogether: the engine's event log, which the driver also reads, keeps the oom event.
    deadline = time.monotonic() + 10
    while (reason := main_runtime.inspect(hog.id).exit_reason) != "OOMKilled":
        assert reason == "signal 9" and time.monotonic() < deadline, reason
        time.sleep(0.05)
    assert main_runtime.inspect(roomy.id).exit_reason == "exit 0"
    # The lost-flag case on purpose: the same container as the engine reports it when the
    # exit overwrote the flag still reads "OOMKilled", from the event log alone.
    flag_lost = docker_client.api.inspect_container(hog.id)
    flag_lost["State"]["OOMKilled"] = False
    fresh_driver = DockerRuntime("node-test", MAIN)
    assert fresh_driver._to_instance(flag_lost).exit_reason == "OOMKilled"
    roomy_attrs = docker_client.api.inspect_container(roomy.id)
    assert fresh_driver._to_instance(roomy_attrs).exit_reason == "exit 0"


def wait_exit_code(runtime: DockerRuntime, instance_id: str) -> int | None:
    deadline = time.monotonic() + 10
    while (state := runtime.inspect(instance_id)).state is not InstanceState.EXITED:
        assert time.monotonic() < deadline, "the container did not exit"
        time.sleep(0.05)
    return state.exit_code


def test_containers_read_well_in_docker_ps(
    main_runtime: DockerRuntime, docker_client: Any, test_images: dict[str, str], cluster: str
) -> None:
    instance = main_runtime.create(_spec(f"{cluster}-web-3f9a1c", test_images["graceful"]), cluster)
    listed = docker_client.api.containers(filters={"label": f"{LABEL_CLUSTER}={cluster}"})
    assert [c["Names"] for c in listed] == [[f"/{cluster}-web-3f9a1c"]]
    assert instance.name == f"{cluster}-web-3f9a1c"


def test_operations_on_a_gone_container_are_instance_not_found(
    main_runtime: DockerRuntime,
) -> None:
    gone = "0" * 64
    for call in (
        lambda: main_runtime.inspect(gone),
        lambda: main_runtime.stop(gone, 1),
        lambda: main_runtime.remove(gone),
        lambda: main_runtime.logs(gone),
        lambda: main_runtime.usage(gone),
    ):
        with pytest.raises(InstanceNotFound):
            call()


# -- endpoints and helpers --------------------------------------------------------------


def test_docker_available_and_factory(tmp_path: Path) -> None:
    assert docker_available() is True
    assert docker_available(f"unix://{tmp_path}/nothing.sock", timeout=0.5) is False
    runtime = open_runtime("n1", "docker")
    assert isinstance(runtime, DockerRuntime) and runtime.node_info().ready
    assert runtime.node_info().limits == "cgroup v1 (memory, cpu) by Docker"
    assert runtime.retained_logs("any", "svc") == []  # no state dir: nothing is kept


def test_the_factory_gives_the_docker_runtime_its_state_dir(
    tmp_path: Path, test_images: dict[str, str], cluster: str
) -> None:
    """What open_runtimes builds for `gitorch logs` and the daemon keeps removed output."""
    runtime = open_runtime("n1", "docker", state_dir=tmp_path / "nodes" / "n1")
    assert isinstance(runtime, DockerRuntime)
    instance = runtime.create(_spec(f"{cluster}-once", test_images["exit3"]), cluster)
    wait_exit_code(runtime, instance.id)
    ended = runtime.inspect(instance.id)  # when it ended: the back-off counts from there
    assert ended.finished_at is not None and ended.started_at is not None
    # The engine's own clock: a process that exits at once may be stamped finished a
    # fraction of a millisecond before its start was recorded.
    assert ended.started_at - 1 <= ended.finished_at <= time.time() + 1
    runtime.remove(instance.id)
    (kept,) = open_runtime("n1", "docker", state_dir=tmp_path / "nodes" / "n1").retained_logs(
        cluster, "t"
    )
    assert kept.output == "exiting with 3\n" and kept.exit_reason == "exit 3"
    assert (tmp_path / "nodes" / "n1" / "retained" / cluster / "t").is_dir()
    with pytest.raises(ConfigError):
        open_runtime("n1", "podman")
    with pytest.raises(ConfigError):
        open_runtime("n1", "process")  # no state dir


def test_unreachable_endpoints_never_raise_from_node_info(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for endpoint in (f"unix://{tmp_path}/nothing.sock", f"tcp://127.0.0.1:{port}"):
        runtime = DockerRuntime("n1", endpoint, timeout=1.0)
        started = time.monotonic()
        info = runtime.node_info()
        assert time.monotonic() - started < 1.5
        assert not info.ready
        assert "not answering" in info.message
        # Said plainly, not as the HTTP client's chain of wrappers.
        assert "connection refused" in info.message or "no socket there" in info.message, info
        assert "Error while fetching" not in info.message, info.message
        with pytest.raises(EngineUnavailable):
            runtime.list_instances("c")
    # Constructing never contacts the engine (ssh is only constructed: no sshd here).
    DockerRuntime("n2", "ssh://gitorch@192.0.2.1")
    DockerRuntime("n3", "tcp://192.0.2.1:2376", tls=DockerTLS(verify=False))


# -- a private engine that the tests may kill -----------------------------------------


@pytest.fixture(scope="module")
def scratch_engine(test_images: dict[str, str]) -> Iterator[PrivateEngine]:
    """One private engine for this module's engine-loss tests (each uses its own cluster)."""
    engine = PrivateEngine(prefix="gd", tcp=True)
    try:
        try:
            engine.boot()
            # Copy the test images over: the private engine has no registry either.
            engine.load_image(test_images["stubborn"], test_images["graceful"])
        except EngineError as exc:
            pytest.fail(str(exc))
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture
def engine(scratch_engine: PrivateEngine) -> PrivateEngine:
    """The module's private engine, running (restarted if an earlier test left it dead)."""
    scratch_engine.ensure_running()  # an EngineError is an AssertionError: a failure
    return scratch_engine


def test_engine_killed_and_restarted(
    engine: PrivateEngine, test_images: dict[str, str], cluster: str
) -> None:
    runtime = DockerRuntime("node-scratch", engine.endpoint, timeout=2.0)
    assert runtime.node_info().ready
    worker = runtime.create(
        _spec(f"{cluster}-w", test_images["stubborn"], stop_grace_seconds=1), cluster
    )
    assert worker.state is InstanceState.RUNNING

    # Killed while a call is in flight: a stop waiting out a 10 s grace period.
    outcome: dict[str, BaseException | None] = {}

    def stop_in_flight() -> None:
        try:
            runtime.stop(worker.id, grace_seconds=10)
            outcome["error"] = None
        except BaseException as exc:  # recorded for the main thread
            outcome["error"] = exc

    caller = threading.Thread(target=stop_in_flight)
    caller.start()
    time.sleep(0.3)  # let the request reach the engine
    killed_at = time.monotonic()
    engine.kill()
    caller.join(timeout=5)
    assert not caller.is_alive(), "stop() hung after the engine died"
    assert isinstance(outcome["error"], EngineUnavailable), outcome
    assert time.monotonic() - killed_at < 3.0

    # Between calls: every call fails fast with EngineUnavailable; node_info reports it.
    for call in (
        lambda: runtime.list_instances(cluster),
        lambda: runtime.inspect(worker.id),
        lambda: runtime.create(_spec(f"{cluster}-w2", test_images["stubborn"]), cluster),
    ):
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="not answering"):
            call()
        assert time.monotonic() - started < 2.5
    info = runtime.node_info()
    assert not info.ready and "not answering" in info.message

    # Back again: the same runtime object works and still finds its instance.
    engine.start()
    assert runtime.node_info().ready
    listed = runtime.list_instances(cluster)
    assert [inst.id for inst in listed] == [worker.id]
    runtime.remove(worker.id)
    assert runtime.list_instances(cluster) == []


def test_hung_engine_times_out(engine: PrivateEngine, cluster: str) -> None:
    runtime = DockerRuntime("node-scratch", engine.endpoint, timeout=1.0)
    assert runtime.list_instances(cluster) == []
    engine.pause()
    try:
        started = time.monotonic()
        with pytest.raises(EngineUnavailable):
            runtime.list_instances(cluster)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        assert not runtime.node_info().ready
        assert time.monotonic() - started < 2.0
    finally:
        engine.resume()
    assert runtime.list_instances(cluster) == []


def test_tcp_endpoint(engine: PrivateEngine, test_images: dict[str, str], cluster: str) -> None:
    runtime = DockerRuntime("node-tcp", engine.tcp_endpoint, timeout=5.0)
    info = runtime.node_info()
    assert info.ready, info.message
    instance = runtime.create(_spec(f"{cluster}-g", test_images["graceful"]), cluster)
    runtime.stop(instance.id, grace_seconds=5)
    assert runtime.inspect(instance.id).exit_code == 0


# -- stop: returns at the exit, the removal cleans up ----------------------------------


def _die_times(docker_client: Any, container_id: str, since: float) -> list[float]:
    """Wall-clock times of the engine's ``die`` events of one container since ``since``."""
    events = docker_client.api.events(
        since=since,
        until=time.time() + 0.5,
        filters={"container": container_id, "event": "die"},
        decode=True,
    )
    return [int(e["timeNano"]) / 1e9 for e in events]


def test_stop_returns_at_the_exit_and_remove_leaves_nothing(
    main_runtime: DockerRuntime, test_images: dict[str, str], docker_client: Any, cluster: str
) -> None:
    """Issue 20: the stop returns once the process has exited (the engine's ``die``), not
    after the engine's clean-up; the container is still there for :meth:`remove`, which
    then leaves no container, and no watcher thread outlives the stop."""
    instance = main_runtime.create(
        _spec(f"{cluster}-g", test_images["graceful"], stop_grace_seconds=5), cluster
    )
    begun = time.time()
    main_runtime.stop(instance.id, grace_seconds=5)
    returned = time.time()
    assert returned - begun < 4.0, "the graceful app exits within ~0.5 s of SIGTERM"
    stopped = main_runtime.inspect(instance.id)
    assert stopped.state is InstanceState.EXITED and stopped.exit_code == 0
    dies = _die_times(docker_client, instance.id, begun - 1)
    assert len(dies) == 1 and begun <= dies[0] <= returned + 0.05, (begun, dies, returned)
    assert "clean exit" in main_runtime.logs(instance.id)
    main_runtime.stop(instance.id, grace_seconds=5)  # stopping a stopped one is fine
    main_runtime.remove(instance.id)
    listed = docker_client.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})
    assert listed == []
    # Its exit watcher (named after it) ends with the stop; other tests' threads of this
    # worker may come and go meanwhile, so only its own are counted.

    def its_watchers() -> list[str]:
        return [t.name for t in threading.enumerate() if instance.id[:12] in t.name]

    deadline = time.monotonic() + 2
    while its_watchers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert its_watchers() == [], [t.name for t in threading.enumerate()]


def test_stop_sends_the_images_stop_signal_then_sigkill_after_the_grace(
    main_runtime: DockerRuntime, test_images: dict[str, str], docker_client: Any, cluster: str
) -> None:
    """As ``docker stop`` does: the container's STOPSIGNAL (nginx's SIGQUIT, say), not
    SIGTERM; a container that ignores it is SIGKILLed once the grace is over."""
    script = (
        "trap 'echo got USR1; exit 7' USR1; trap '' TERM; while true; do sleep 1 & wait $!; done"
    )
    created = docker_client.api.create_container(
        test_images["graceful"],
        command=["/bin/sh", "-c", script],
        stop_signal="SIGUSR1",
        labels={LABEL_CLUSTER: cluster},
        host_config=docker_client.api.create_host_config(init=True),
    )
    docker_client.api.start(created["Id"])
    time.sleep(0.5)  # the traps are set
    begun = time.monotonic()
    main_runtime.stop(created["Id"], grace_seconds=5)
    assert time.monotonic() - begun < 4.0
    assert main_runtime.inspect(created["Id"]).exit_code == 7
    main_runtime.remove(created["Id"])

    stubborn = main_runtime.create(
        _spec(f"{cluster}-s", test_images["stubborn"], stop_grace_seconds=1), cluster
    )
    begun = time.monotonic()
    main_runtime.stop(stubborn.id, grace_seconds=1)
    took = time.monotonic() - begun
    assert 1.0 <= took < 5.0, took
    assert main_runtime.inspect(stubborn.id).exit_code == 137


# -- the observation: one listing, inspects only where the listing cannot vouch ---------


def _counting_inspects(runtime: DockerRuntime, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    inspected: list[str] = []
    inspect = runtime.inspect

    def counted(instance_id: str) -> Any:
        inspected.append(instance_id)
        return inspect(instance_id)

    monkeypatch.setattr(runtime, "inspect", counted)
    return inspected


def test_a_listing_inspects_only_what_changed(
    main_runtime: DockerRuntime,
    test_images: dict[str, str],
    cluster: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20: a pass's observation was a listing and an inspect per container (12
    engine calls for a 10-replica rollout). A running container listed as it was
    inspected (by its create, or an earlier listing) is not inspected again; one whose
    state changed is, and its exit is reported."""
    spec = _spec(f"{cluster}-a", test_images["http"], ports=(PortRequest("http", 8080),))
    started = main_runtime.create(spec, cluster)
    inspected = _counting_inspects(main_runtime, monkeypatch)
    first = main_runtime.list_instances(cluster)
    assert [i.id for i in first] == [started.id] and inspected == []
    assert first[0].ports == started.ports and first[0].state is InstanceState.RUNNING
    assert main_runtime.list_instances(cluster)[0] is first[0] and inspected == []
    main_runtime.stop(started.id, grace_seconds=5)
    stopped = main_runtime.list_instances(cluster)
    assert inspected == [started.id]
    assert stopped[0].state is InstanceState.EXITED and stopped[0].exit_code is not None
    main_runtime.list_instances(cluster)  # exited ones are inspected each time (not kept)
    assert inspected == [started.id, started.id]


def test_a_restart_between_two_listings_is_seen_by_its_die_event(
    main_runtime: DockerRuntime,
    test_images: dict[str, str],
    docker_client: Any,
    cluster: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``docker restart`` between two listings leaves a running container with the same
    ports: its ``die`` event (read by the daemon's exit watcher) makes the next listing
    inspect it, so its new start time is seen; without the event, a listing older
    than INSPECT_KEPT_FOR is inspected again anyway."""
    died = threading.Event()
    main_runtime.on_exit(lambda _: died.set())
    try:
        spec = _spec(f"{cluster}-r", test_images["http"], ports=(PortRequest("http", 8080),))
        started = main_runtime.create(spec, cluster)
        before = main_runtime.list_instances(cluster)[0]
        time.sleep(1.1)  # StartedAt moves visibly
        docker_client.api.restart(started.id, timeout=1)
        assert died.wait(15), "the die event of the restart"
        inspected = _counting_inspects(main_runtime, monkeypatch)
        after = main_runtime.list_instances(cluster)[0]
        assert inspected == [started.id]
        assert after.state is InstanceState.RUNNING
        assert after.started_at is not None and before.started_at is not None
        assert after.started_at > before.started_at
    finally:
        main_runtime.on_exit(None)
    monkeypatch.setattr(docker_module, "INSPECT_KEPT_FOR", 0.0)
    main_runtime.list_instances(cluster)
    assert inspected == [started.id, started.id]

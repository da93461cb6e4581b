"""Runtime start-to-ready benchmark: gitorch's drivers against the bare floor.

    python3 bench/bench_runtime.py [--count 50] [--list-count 500] [--no-docker]

For each driver, ``--count`` replicas are started one after the other; each one's
start-to-ready time is ``create()`` + polling its HTTP health URL until the first 2xx.
The floor is measured in the same run, interleaved replica by replica so drift hits both
sides alike:

* process driver vs ``subprocess.Popen`` of the *same* argv and env (port in ``$PORT``),
  polling the same URL the same way;
* docker driver vs ``docker run -d -p 127.0.0.1:<port>:8080`` of the *same* image through
  the CLI, polling the same URL the same way.

Every replica is removed right after it was measured (removal is not timed). The docker part
runs only when an engine answers (it builds the test image of ``tests/runtime/images`` with
that suite's own builder). Last, ``--list-count`` idle replicas are started on the process
driver and ``list_instances`` is timed over them (goal: observing live state < 200 ms).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import importlib.util
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verdicts import emit  # noqa: E402

from gitorch.runtime.base import (  # noqa: E402  (the repo path is set just above)
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    Instance,
    PortRequest,
    Probe,
    ReplicaSpec,
    Runtime,
)

HEALTH_PATH = "/healthz"
CONTAINER_PORT = 8080
POLL_SECONDS = 0.002  # the same poll interval for the driver and its floor
READY_TIMEOUT = 30.0
GOAL_RATIO = 1.3
LIST_GOAL_MS = 200.0
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
# busybox httpd: starts in a few ms, so driver overhead is not hidden behind app start-up.
HTTPD_ARGV = (BUSYBOX, "sh", "-c", 'exec "$BUSYBOX" httpd -f -p "127.0.0.1:$PORT" -h "$WWW"')


@dataclass
class Series:
    """Start-to-ready seconds of one side of a comparison."""

    label: str
    seconds: list[float]

    def line(self) -> str:
        ms = sorted(s * 1000 for s in self.seconds)
        p90 = ms[max(0, int(round(0.9 * len(ms))) - 1)]
        return (
            f"  {self.label:<34} median {statistics.median(ms):7.1f} ms   "
            f"mean {statistics.mean(ms):7.1f}   p90 {p90:7.1f}   max {ms[-1]:7.1f}   n={len(ms)}"
        )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (local URL)
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


def poll_until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT
    while not ready():
        if time.perf_counter() > deadline:
            raise SystemExit(f"bench: {what} never became ready")
        time.sleep(POLL_SECONDS)


def post_push_event(
    port: int, secret: str, sha: str, clock: Callable[[], float] = time.perf_counter
) -> float:
    """POST a GitHub push event of ``sha`` on main, signed with ``secret``, to the daemon's
    webhook on ``port``; the ``clock`` time it was sent (exits unless answered 202)."""
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = clock()
    conn.request(
        "POST",
        "/api/v1/webhook",
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-Hub-Signature-256": f"sha256={signature}",
        },
    )
    status = conn.getresponse().status
    conn.close()
    if status != 202:
        raise SystemExit(f"bench: the webhook was answered {status}, not 202")
    return sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def driver_start_to_ready(
    runtime: Runtime, spec: ReplicaSpec, cluster: str, create_times: list[float]
) -> float:
    """create() + the driver's own http probe until ok; the replica is removed after.

    The time ``create()`` alone took is appended to ``create_times``.
    """
    probe = Probe(http_path=HEALTH_PATH, port=CONTAINER_PORT, timeout_seconds=1.0)
    started = time.perf_counter()
    instance: Instance = runtime.create(spec, cluster)
    create_times.append(time.perf_counter() - started)
    try:
        poll_until(lambda: runtime.probe(instance, probe).ok, spec.name)
        return time.perf_counter() - started
    finally:
        runtime.remove(instance.id)


def spec_for(name: str, **fields: object) -> ReplicaSpec:
    fields.setdefault("image", None)
    return ReplicaSpec(
        name=name,
        ports=(PortRequest("http", CONTAINER_PORT),),
        labels={
            LABEL_SERVICE: "bench",
            LABEL_REPLICA: name.rsplit("-", 1)[-1],
            LABEL_REVISION: "bench",
            LABEL_SPEC_DIGEST: "bench",
        },
        stop_grace_seconds=1.0,
        **fields,  # type: ignore[arg-type]
    )


# -- process ----------------------------------------------------------------------------


def bench_process(count: int, scratch: Path) -> tuple[Series, Series, Series]:
    from gitorch.runtime.process import ProcessRuntime

    www = scratch / "www"
    www.mkdir()
    (www / "healthz").write_text("ok\n")
    runtime = ProcessRuntime("bench", scratch / "state", workdir=scratch)
    cluster = f"bench{uuid.uuid4().hex[:8]}"
    env = {"BUSYBOX": BUSYBOX, "WWW": str(www)}
    driver: list[float] = []
    floor: list[float] = []
    creates: list[float] = []
    for i in range(count):
        spec = spec_for(f"{cluster}-web-{i}", command=HTTPD_ARGV, env=env)
        driver.append(driver_start_to_ready(runtime, spec, cluster, creates))
        floor.append(popen_start_to_ready(env))
    return (
        Series("process driver (create + probe)", driver),
        Series("floor: Popen + poll", floor),
        Series("of which create() alone", creates),
    )


def popen_start_to_ready(env: dict[str, str]) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        HTTPD_ARGV,
        env={**env, "PORT": str(port), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        poll_until(lambda: http_ok(f"http://127.0.0.1:{port}{HEALTH_PATH}"), "popen floor")
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()


def bench_list(count: int, scratch: Path) -> list[float]:
    """Seconds per ``list_instances`` over ``count`` live idle replicas (5 calls)."""
    from gitorch.runtime.process import ProcessRuntime

    runtime = ProcessRuntime("bench", scratch / "state-list", workdir=scratch)
    cluster = f"list{uuid.uuid4().hex[:8]}"
    created = []
    try:
        for i in range(count):
            spec = spec_for(f"{cluster}-idle-{i}", command=("sleep", "600"))
            created.append(runtime.create(replace(spec, ports=()), cluster).id)
        fresh = ProcessRuntime("bench", scratch / "state-list", workdir=scratch)  # cold object
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            listed = fresh.list_instances(cluster)
            timings.append(time.perf_counter() - started)
            if len(listed) != count or any(i.state.value != "running" for i in listed):
                raise SystemExit(f"bench: list_instances saw {len(listed)} of {count} running")
        return timings
    finally:
        for instance_id in created:
            runtime.remove(instance_id)


# -- docker -----------------------------------------------------------------------------


def docker_image(scratch: Path) -> str:
    """Build (or reuse) the contract suite's http test image with its own builder."""
    import docker

    path = REPO / "tests" / "runtime" / "runtime_helpers.py"
    module_spec = importlib.util.spec_from_file_location("_runtime_test_images", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=60)
    try:
        return str(module.build_test_images(client, scratch)["http"])
    finally:
        client.close()


def bench_docker(count: int, scratch: Path) -> tuple[Series, Series, Series]:
    from gitorch.runtime.docker import DockerRuntime

    image = docker_image(scratch)
    runtime = DockerRuntime("bench", timeout=30.0)
    cluster = f"bench{uuid.uuid4().hex[:8]}"
    driver: list[float] = []
    floor: list[float] = []
    creates: list[float] = []
    for i in range(count):
        spec = spec_for(f"{cluster}-web-{i}", image=image)
        driver.append(driver_start_to_ready(runtime, spec, cluster, creates))
        floor.append(docker_run_start_to_ready(image))
    return (
        Series("docker driver (create + probe)", driver),
        Series("floor: docker run -d -p + poll", floor),
        Series("of which create() alone", creates),
    )


def docker_run_start_to_ready(image: str) -> float:
    port = free_port()
    started = time.perf_counter()
    run = subprocess.run(
        ["docker", "run", "-d", "-e", f"PORT={CONTAINER_PORT}"]
        + ["-p", f"127.0.0.1:{port}:{CONTAINER_PORT}", image],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    container = run.stdout.strip()
    try:
        poll_until(lambda: http_ok(f"http://127.0.0.1:{port}{HEALTH_PATH}"), "docker run floor")
        return time.perf_counter() - started
    finally:
        subprocess.run(
            ["docker", "rm", "-f", container], capture_output=True, check=False, timeout=60
        )


def docker_answers() -> bool:
    try:
        from gitorch.runtime import docker_available

        return docker_available(timeout=2.0)
    except Exception:  # no SDK, no engine: the docker part is skipped and said so
        return False


# -- report -----------------------------------------------------------------------------


def report(title: str, driver: Series, floor: Series, creates: Series) -> None:
    ours, bare = statistics.median(driver.seconds), statistics.median(floor.seconds)
    ratio = ours / bare
    verdict = "OK" if ratio <= GOAL_RATIO else "OVER GOAL"
    print(title)
    print(driver.line())
    print(floor.line())
    print(creates.line())
    print(f"  ratio of medians {ratio:.2f}x (goal <= {GOAL_RATIO}x): {verdict}")
    emit(
        f"{title.rstrip(':')}: create + probe, median",
        f"{ours * 1000:.0f} ms",
        against=f"{floor.label.strip()} ({bare * 1000:.0f} ms)",
        ratio=f"{ratio:.2f}x",
        goal=f"<= {GOAL_RATIO}x the floor",
        met=ratio <= GOAL_RATIO,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50, help="replicas per driver")
    parser.add_argument("--list-count", type=int, default=500, help="replicas for the list")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker driver")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gitorch-bench-") as tmp:
        scratch = Path(tmp)
        report(
            f"process driver, {args.count} replicas (busybox httpd):",
            *bench_process(args.count, scratch),
        )
        if args.no_docker:
            print("docker driver: skipped (--no-docker)")
        elif not docker_answers():
            print("docker driver: skipped (no engine answers at unix:///var/run/docker.sock)")
        else:
            report(
                f"docker driver, {args.count} replicas (gitorch-test/http image):",
                *bench_docker(args.count, scratch),
            )
        timings = [t * 1000 for t in bench_list(args.list_count, scratch)]
        worst = max(timings)
        verdict = "OK" if worst < LIST_GOAL_MS else "OVER GOAL"
        print(f"process driver list_instances over {args.list_count} running replicas:")
        print(
            f"  median {statistics.median(timings):.1f} ms   max {worst:.1f} ms of 5 calls "
            f"(goal < {LIST_GOAL_MS:.0f} ms): {verdict}"
        )
        emit(
            f"process driver list_instances, {args.list_count} running replicas, slowest of 5",
            f"{worst:.1f} ms",
            goal=f"< {LIST_GOAL_MS:.0f} ms",
            met=worst < LIST_GOAL_MS,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

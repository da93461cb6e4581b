"""Helpers for the runtime tests: the test images (built from ``images/`` with busybox)
and ``RuntimeKit``, the same workload described for either driver.

Named ``runtime_helpers`` (not conftest) so test modules import it under a name no other
test folder uses; ``conftest.py`` beside it keeps only the fixtures.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gitorch.errors import InstanceNotFound, RuntimeDriverError
from gitorch.runtime import _proc
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    PortRequest,
    ReplicaSpec,
    Runtime,
)

HERE = Path(__file__).parent
REPO = HERE.parents[1]
APPS = HERE / "apps"
IMAGE_CONTEXT = HERE / "images"
BUSYBOX = Path("/bin/busybox")
DOCKER_ENDPOINT = "unix:///var/run/docker.sock"
KINDS = ("http", "graceful", "stubborn", "exit3")
#: Label on test images: the digest of the build context they were built from.
CONTEXT_DIGEST_LABEL = "dev.gitorch.test.context-digest"
HTTP_PORT = 8080
_APP_FILES = {
    "http": "http_app.py",
    "graceful": "graceful.py",
    "stubborn": "stubborn.py",
    "exit3": "exit3.py",
}


def wait_until(what: str, fn: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    stat = _proc.read_stat(pid)
    return stat is not None and not stat.is_dead


def process_spec(name: str, *argv: str, **overrides: Any) -> ReplicaSpec:
    """A process-driver replica running ``argv``, of service ``svc``."""
    base = ReplicaSpec(
        name=name,
        image=None,
        command=(argv[0],),
        args=tuple(argv[1:]),
        labels={LABEL_SERVICE: "svc"},
        stop_grace_seconds=2.0,
    )
    return replace(base, **overrides)


def create_from_another_process(
    node: str, state_dir: Path, workdir: Path, cluster: str, spec_source: str
) -> str:
    """Create a replica from a Python process that then exits, as a daemon that dies
    would; ``spec_source`` is the ReplicaSpec(...) expression. Returns the instance id."""
    creator = f"""
import sys
from pathlib import Path
from gitorch.runtime.base import ReplicaSpec
from gitorch.runtime.process import ProcessRuntime
rt = ProcessRuntime({node!r}, Path(sys.argv[1]), workdir=Path(sys.argv[2]))
print(rt.create({spec_source}, {cluster!r}).id)
"""
    done = subprocess.run(
        [sys.executable, "-c", creator, str(state_dir), str(workdir)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    return done.stdout.strip()


def image_tag(kind: str) -> str:
    return f"gitorch-test/{kind}:1"


def _context_digest() -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in IMAGE_CONTEXT.rglob("*") if p.is_file())
    for path in [*files, BUSYBOX]:
        digest.update(str(path.relative_to(path.anchor)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def require_docker_client() -> Any:
    """A docker SDK client for the main engine, or FAIL the test (never skip)."""
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER_ENDPOINT, version="auto", timeout=30)
        client.ping()
    except Exception as exc:  # any failure means: no engine, and that is a test failure
        pytest.fail(f"Docker engine at {DOCKER_ENDPOINT} does not answer: {exc}")
    return client


def build_test_images(client: Any, tmp_dir: Path) -> dict[str, str]:
    """Build every test image unless it exists with the same context digest."""
    digest = _context_digest()
    tags: dict[str, str] = {}
    context: Path | None = None
    for kind in KINDS:
        tag = image_tag(kind)
        tags[kind] = tag
        try:
            existing = client.images.get(tag)
            if (existing.labels or {}).get(CONTEXT_DIGEST_LABEL) == digest:
                continue
        except Exception:  # docker.errors.ImageNotFound: build it
            pass
        if context is None:
            if not BUSYBOX.exists():
                pytest.fail("/bin/busybox is missing: apt-get install busybox-static")
            context = tmp_dir / "context"
            shutil.copytree(IMAGE_CONTEXT, context)
            shutil.copy2(BUSYBOX, context / "busybox")
        client.images.build(
            path=str(context),
            target=kind,
            tag=tag,
            labels={CONTEXT_DIGEST_LABEL: digest},
            rm=True,
            forcerm=True,
        )
    return tags


@dataclass
class RuntimeKit:
    """A runtime under test plus the driver-specific way to describe each workload."""

    driver: str
    cluster: str
    runtime: Runtime
    make_runtime: Callable[[], Runtime]
    images: dict[str, str] = field(default_factory=dict)
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def spec(self, kind: str, **overrides: Any) -> ReplicaSpec:
        """The ``kind`` workload (http | graceful | stubborn | exit3) for this driver."""
        assert kind in _APP_FILES, kind
        number = next(self._counter)
        ports = (PortRequest("http", HTTP_PORT),) if kind == "http" else ()
        if self.driver == "docker":
            image: str | None = self.images[kind]
            command: tuple[str, ...] = ()
        else:
            image = None
            command = (sys.executable, "-u", str(APPS / _APP_FILES[kind]))
        base = ReplicaSpec(
            name=f"{self.cluster}-{kind}-{number}",
            image=image,
            command=command,
            ports=ports,
            labels={
                LABEL_SERVICE: kind,
                LABEL_REPLICA: str(number),
                LABEL_REVISION: "0123abc",
                LABEL_SPEC_DIGEST: f"digest-{kind}",
            },
            stop_grace_seconds=5.0,
        )
        return replace(base, **overrides)

    def exec_command(self, ok: bool) -> tuple[str, ...]:
        """An exec probe command that passes (or fails) only if run with the replica's env."""
        want = "1" if ok else "0"
        if self.driver == "docker":
            return ("sh", "-c", f'test "${{PORT:+1}}" = "1" && test "{want}" = "1"')
        script = f"import os, sys; sys.exit(0 if os.environ.get('PORT') and {want} else 1)"
        return (sys.executable, "-c", script)

    def new_runtime(self) -> Runtime:
        """A brand-new Runtime object for the same node (as after a daemon restart)."""
        return self.make_runtime()

    def cleanup(self) -> None:
        """Remove every instance and volume of this test's cluster."""
        try:
            instances = self.make_runtime().list_instances(self.cluster)
        except RuntimeDriverError:
            return
        for instance in instances:
            with contextlib.suppress(InstanceNotFound):
                self.runtime.remove(instance.id)
        for volume in self.runtime.list_volumes(self.cluster):
            with contextlib.suppress(RuntimeDriverError):
                self.runtime.remove_volume(volume.name, self.cluster)

    def shell(self, name: str, script: str, **overrides: Any) -> ReplicaSpec:
        """A replica running ``sh -c SCRIPT`` (the test image's busybox sh on docker, the
        node's /bin/sh on the process driver)."""
        command = ("sh", "-c", script) if self.driver == "docker" else ("/bin/sh", "-c", script)
        spec = self.spec("http", **overrides)
        return replace(spec, name=f"{spec.name}-{name}", command=command, ports=())

"""Fixtures for the example shop's tests: run the Python apps and the busybox images for real."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest
from listen_ports import free_port
from shop_helpers import (
    APP_SWITCHES,
    BUILD_SH,
    REPO_ROOT,
    TEST_LABEL,
    RunningApp,
    RunningContainer,
    docker,
    wait_for_http,
)


@pytest.fixture
def start_app() -> Iterator[Callable[..., RunningApp]]:
    """Start ``python3 examples/apps/<app>/app.py`` on a free port, as the process driver would."""
    started: list[RunningApp] = []

    def start(app: str, env: Mapping[str, str] | None = None, wait: bool = True) -> RunningApp:
        port = free_port()
        # The apps' own switches must come from the test only, never from the CI's env.
        full_env = {k: v for k, v in os.environ.items() if k not in APP_SWITCHES}
        full_env.update({"PORT": str(port), "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, f"examples/apps/{app}/app.py"],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running = RunningApp(app, port, proc)
        started.append(running)
        if wait:
            wait_for_http(running.url + "/healthz", alive=lambda: proc.poll() is None)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
        running.proc.communicate(timeout=5)


@pytest.fixture(scope="session")
def example_images(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Run build.sh once per session, from an unrelated cwd; return how long it took."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    started = time.monotonic()
    result = subprocess.run([str(BUILD_SH)], cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout}\n{result.stderr}"
    return took


@pytest.fixture
def run_container(example_images: float) -> Iterator[Callable[..., RunningContainer]]:
    """``docker run -d`` an example image with its port published on 127.0.0.1; removed after."""
    names: list[str] = []

    def run(
        image: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        extra: tuple[str, ...] = (),
    ) -> RunningContainer:
        """``extra``: more ``docker run`` options, e.g. ``("-v", "/host:/data")``."""
        # Our own name, registered before "docker run": a run that fails after creating
        # the container (e.g. a network error) still leaves nothing behind.
        name = f"gitorch-example-test-{uuid.uuid4().hex[:12]}"
        names.append(name)
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        cid = docker(
            "run",
            "-d",
            "--name",
            name,
            "--label",
            TEST_LABEL,
            "-p",
            "127.0.0.1::8080",
            *env_args,
            *extra,
            image,
        ).stdout.strip()
        container = RunningContainer(cid, 0)
        if wait:
            mapping = docker("port", cid, "8080/tcp").stdout.splitlines()[0]
            container.port = int(mapping.rsplit(":", 1)[1])
            wait_for_http(container.url + "/cgi-bin/healthz")
        return container

    yield run
    if names:
        docker("rm", "-f", *names, check=False)

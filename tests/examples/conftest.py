"""Fixtures for the example shop's tests: run the Python apps and the busybox images for real."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
BUILD_SH = EXAMPLES / "images" / "build.sh"
TEST_LABEL = "dev.gitorch.test=examples"


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    seconds: float


def http_get(url: str, timeout: float = 5.0) -> Answer:
    """GET without raising on HTTP error statuses; measures the round trip."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (local test URLs)
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    return Answer(status, body, time.monotonic() - started)


def wait_for_http(
    url: str, deadline_s: float = 10.0, alive: Callable[[], bool] = lambda: True
) -> Answer:
    """Poll until the server answers any HTTP status (it is up), or fail.

    ``alive`` lets the caller stop waiting at once when the server process has died.
    """
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            return http_get(url, timeout=1.0)
        except (
            urllib.error.URLError,
            ConnectionError,
            TimeoutError,
            http.client.HTTPException,
        ) as exc:
            last = exc
            assert alive(), f"the server for {url} exited while starting"
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {deadline_s}s: {last}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningApp:
    app: str
    port: int
    proc: subprocess.Popen[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 5.0) -> tuple[int, str]:
        """SIGTERM, wait, and return (exit code, everything it wrote to stdout)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


@pytest.fixture
def start_app() -> Iterator[Callable[..., RunningApp]]:
    """Start ``python3 examples/apps/<app>/app.py`` on a free port, as the process driver would."""
    started: list[RunningApp] = []

    def start(app: str, env: Mapping[str, str] | None = None, wait: bool = True) -> RunningApp:
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if k not in ("FAIL_MODE", "SLOW_MS")}
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


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a missing engine makes the calling test fail, never skip."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="session")
def example_images(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Run build.sh once per session, from an unrelated cwd; return how long it took."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    started = time.monotonic()
    result = subprocess.run([str(BUILD_SH)], cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout}\n{result.stderr}"
    return took


@dataclass
class RunningContainer:
    id: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ip(self) -> str:
        return docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.id).stdout.strip()

    def logs(self) -> str:
        result = docker("logs", self.id)
        return result.stdout + result.stderr


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

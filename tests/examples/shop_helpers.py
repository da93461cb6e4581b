"""Helpers for the example shop's tests: HTTP calls, free ports, the docker CLI.

Kept out of conftest.py so test modules can import them under a name no other test
folder uses (every folder's conftest is a module named "conftest").
"""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
BUILD_SH = EXAMPLES / "images" / "build.sh"
TEST_LABEL = "dev.gitorch.test=examples"
#: Env variables the example apps read (see examples/README.md).
APP_SWITCHES = frozenset(
    {"PORT", "HOST", "VERSION", "FAIL_MODE", "SLOW_MS", "WORK_INTERVAL_MS", "DATA_DIR"}
    | {"API_SERVICE_HOST", "API_SERVICE_PORT", "DRAIN_MS"}
    | {"VOLUME_DATA", "COUNTER_MODE", "LINGER_MS"}
)


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


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; a missing engine makes the calling test fail, never skip."""
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


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


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds: waits only as long as needed, even on a loaded machine."""
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"{what} did not hold within {timeout}s"
        time.sleep(0.05)


def jobs_done(page_body: str) -> int:
    """The worker's ``jobs_done=N`` from its version page."""
    return int(page_body.split("jobs_done=")[1])


def fields(page_body: str) -> dict[str, str]:
    """A version page's ``key=value`` words (the counter's ``starts``, ``conflicts``...)."""
    return dict(word.split("=", 1) for word in page_body.split() if "=" in word)

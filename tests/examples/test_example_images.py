"""The example shop's busybox images: built by build.sh, run by a real Docker engine.

A missing engine fails these tests (build.sh or ``docker run`` fails), it never skips them.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from shop_helpers import (
    BUILD_SH,
    Answer,
    RunningContainer,
    docker,
    eventually,
    http_get,
    jobs_done,
)

pytestmark = pytest.mark.docker

RunContainer = Callable[..., RunningContainer]
IMAGES = [("web", "1"), ("web", "2"), ("api", "1"), ("api", "2"), ("worker", "1")]
#: Built too, but it needs a data folder to answer: tests/examples/test_example_counter.py.
STATEFUL = [("counter", "1")]


def test_build_is_idempotent_and_fast_from_any_cwd(example_images: float, tmp_path: Path) -> None:
    # The session fixture already built everything once (from another cwd): a second run
    # must change nothing and be quick, thanks to docker's layer cache.
    before = {
        f"{a}:{v}": docker("image", "inspect", "-f", "{{.Id}}", f"gitorch-example/{a}:{v}").stdout
        for a, v in IMAGES + STATEFUL
    }
    started = time.monotonic()
    result = subprocess.run([str(BUILD_SH)], cwd=tmp_path, capture_output=True, text=True)
    took = time.monotonic() - started
    after = {
        f"{a}:{v}": docker("image", "inspect", "-f", "{{.Id}}", f"gitorch-example/{a}:{v}").stdout
        for a, v in IMAGES + STATEFUL
    }

    assert result.returncode == 0, result.stderr
    assert after == before
    assert took < 10, f"a cached rebuild of 6 images took {took:.1f}s"


@pytest.mark.parametrize(("app", "version"), IMAGES)
def test_image_answers_and_stops_on_sigterm(
    run_container: RunContainer, app: str, version: str
) -> None:
    container = run_container(f"gitorch-example/{app}:{version}")

    health = http_get(container.url + "/cgi-bin/healthz")
    page = http_get(container.url + "/")
    started = time.monotonic()
    docker("stop", "-t", "10", container.id)
    stop_seconds = time.monotonic() - started
    exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", container.id).stdout.strip()

    assert (health.status, health.body) == (200, "ok\n")
    assert page.status == 200
    assert page.body.startswith(f"app={app} version={version} instance=")
    # busybox httpd as PID 1 would ignore SIGTERM and docker stop would wait 10 s.
    assert stop_seconds < 2, f"docker stop took {stop_seconds:.2f}s"
    assert exit_code == "0"
    logs = container.logs()
    assert '"GET /cgi-bin/healthz" 200' in logs
    assert '"GET /" 200' in logs
    assert "received SIGTERM" in logs


def test_fail_mode_unhealthy(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/api:1", {"FAIL_MODE": "unhealthy"})

    assert http_get(container.url + "/cgi-bin/healthz").status == 503
    assert http_get(container.url + "/").status == 200


def test_fail_mode_errors(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/api:2", {"FAIL_MODE": "errors"})

    page = http_get(container.url + "/")
    items = http_get(container.url + "/cgi-bin/items")

    assert http_get(container.url + "/cgi-bin/healthz").status == 200
    assert page.status == 500
    assert "FAIL_MODE=errors" in page.body
    assert items.status == 500


def test_slow_ms_slows_pages_but_not_health(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/web:1", {"SLOW_MS": "1000"})

    page = http_get(container.url + "/")
    health = http_get(container.url + "/cgi-bin/healthz")

    assert page.status == 200
    assert page.seconds >= 1.0
    assert health.seconds < 0.7  # a CGI forks a few processes: leave room on a busy machine


def test_web_calls_api_through_service_env(run_container: RunContainer) -> None:
    api = run_container("gitorch-example/api:2")
    web = run_container(
        "gitorch-example/web:1", {"API_SERVICE_HOST": api.ip(), "API_SERVICE_PORT": "8080"}
    )
    lonely = run_container("gitorch-example/web:1")

    answer = http_get(web.url + "/cgi-bin/api")

    assert answer.status == 200
    assert answer.body.startswith("api says: app=api version=2 ")
    assert http_get(lonely.url + "/cgi-bin/api").status == 503


def test_api_items(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/api:2")

    items = http_get(container.url + "/cgi-bin/items")

    assert items.status == 200
    assert '"version": "2"' in items.body


def test_worker_loop_runs_and_feeds_health(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/worker:1", {"WORK_INTERVAL_MS": "100"})

    eventually(lambda: jobs_done(http_get(container.url + "/").body) >= 2, what="two jobs")

    assert http_get(container.url + "/cgi-bin/healthz").status == 200
    assert "job 2 done" in container.logs()


def test_worker_journal_on_a_mounted_volume(run_container: RunContainer, tmp_path: Path) -> None:
    container = run_container(
        "gitorch-example/worker:1",
        {"WORK_INTERVAL_MS": "100", "DATA_DIR": "/data"},
        extra=("-v", f"{tmp_path}:/data"),
    )
    eventually(lambda: jobs_done(http_get(container.url + "/").body) >= 2, what="two jobs")
    docker("stop", "-t", "10", container.id)

    lines = (tmp_path / "jobs.log").read_text().splitlines()
    assert len(lines) >= 2
    assert " job 1 done (" in lines[0]


def test_sigterm_lets_the_request_in_flight_finish(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/web:2", {"SLOW_MS": "700"})
    answers: list[Answer] = []
    client = threading.Thread(target=lambda: answers.append(http_get(container.url + "/")))
    client.start()
    time.sleep(0.2)  # the CGI is now inside its 700 ms delay

    started = time.monotonic()
    docker("stop", "-t", "10", container.id)
    stop_seconds = time.monotonic() - started
    client.join(timeout=5)

    assert [a.status for a in answers] == [200]
    assert stop_seconds < 2
    assert docker("inspect", "-f", "{{.State.ExitCode}}", container.id).stdout.strip() == "0"


def test_bad_switch_stops_the_container_with_a_clear_message(run_container: RunContainer) -> None:
    container = run_container("gitorch-example/api:1", {"FAIL_MODE": "sometimes"}, wait=False)

    code = docker("wait", container.id, timeout=10).stdout.strip()

    assert code == "2"
    assert "FAIL_MODE='sometimes'" in container.logs()

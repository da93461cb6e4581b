"""The example shop's Python apps, each run as a real subprocess on a free port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from shop_helpers import Answer, RunningApp, eventually, http_get, jobs_done

StartApp = Callable[..., RunningApp]
APPS = ("web", "api", "worker")


@pytest.mark.parametrize("app", APPS)
def test_health_version_page_and_clean_sigterm(start_app: StartApp, app: str) -> None:
    running = start_app(app, {"VERSION": "7"})

    health = http_get(running.url + "/healthz")
    page = http_get(running.url + "/")

    assert (health.status, health.body) == (200, "ok\n")
    assert page.status == 200
    assert page.body.startswith(f"app={app} version=7 instance=")
    code, out = running.terminate()
    assert code == 0
    # One log line per request, on stdout (start_app's readiness poll made one more).
    assert out.count('"GET /healthz" 200') == 2
    assert out.count('"GET /" 200') == 1
    assert out.count('"GET ') == 3


@pytest.mark.parametrize("app", APPS)
def test_fail_mode_unhealthy_fails_only_the_health_check(start_app: StartApp, app: str) -> None:
    running = start_app(app, {"FAIL_MODE": "unhealthy"})

    assert http_get(running.url + "/healthz").status == 503
    assert http_get(running.url + "/").status == 200


@pytest.mark.parametrize("app", APPS)
def test_fail_mode_errors_fails_every_other_path(start_app: StartApp, app: str) -> None:
    running = start_app(app, {"FAIL_MODE": "errors", "VERSION": "2"})

    assert http_get(running.url + "/healthz").status == 200
    page = http_get(running.url + "/")
    assert page.status == 500
    assert "FAIL_MODE=errors" in page.body
    assert http_get(running.url + "/no-such-page").status == 500


def test_api_items_and_errors_mode(start_app: StartApp) -> None:
    good = start_app("api", {"VERSION": "3"})
    bad = start_app("api", {"FAIL_MODE": "errors"})

    items = http_get(good.url + "/items")
    assert items.status == 200
    doc = json.loads(items.body)
    assert doc["version"] == "3"
    assert len(doc["items"]) == 3
    assert http_get(bad.url + "/items").status == 500


def test_slow_ms_slows_pages_but_not_health(start_app: StartApp) -> None:
    running = start_app("web", {"SLOW_MS": "500"})

    page = http_get(running.url + "/")
    health = http_get(running.url + "/healthz")

    assert page.status == 200
    assert page.seconds >= 0.5
    assert health.status == 200
    assert health.seconds < 0.4


def test_sigterm_finishes_the_request_in_flight(start_app: StartApp) -> None:
    running = start_app("api", {"SLOW_MS": "600"})
    answers: list[Answer] = []
    client = threading.Thread(target=lambda: answers.append(http_get(running.url + "/")))
    client.start()
    time.sleep(0.2)  # the request is now inside its 600 ms delay

    code, out = running.terminate()
    client.join(timeout=5)

    assert code == 0
    assert [a.status for a in answers] == [200]
    assert "received SIGTERM" in out
    assert out.index("received SIGTERM") < out.index('"GET /" 200')


def test_sigterm_on_an_idle_app_exits_promptly(start_app: StartApp) -> None:
    running = start_app("worker", {"WORK_INTERVAL_MS": "5000"})
    started = time.monotonic()

    code, _ = running.terminate()

    assert code == 0
    # The job loop waits on an event, not a sleep: a 5 s interval does not delay the stop.
    assert time.monotonic() - started < 1.5


def test_web_shows_the_api_answer(start_app: StartApp) -> None:
    api = start_app("api", {"VERSION": "2"})
    web = start_app("web", {"API_SERVICE_HOST": "127.0.0.1", "API_SERVICE_PORT": str(api.port)})

    answer = http_get(web.url + "/api")

    assert answer.status == 200
    assert answer.body.startswith("api says: app=api version=2 ")


def test_web_reports_a_failing_or_missing_api(start_app: StartApp) -> None:
    api = start_app("api", {"FAIL_MODE": "errors"})
    web = start_app("web", {"API_SERVICE_HOST": "127.0.0.1", "API_SERVICE_PORT": str(api.port)})
    lonely = start_app("web", {"API_SERVICE_HOST": "", "API_SERVICE_PORT": ""})

    assert http_get(web.url + "/api").status == 502
    assert http_get(lonely.url + "/api").status == 503


def test_worker_does_periodic_work(start_app: StartApp) -> None:
    running = start_app("worker", {"WORK_INTERVAL_MS": "50"})

    eventually(lambda: jobs_done(http_get(running.url + "/").body) >= 2, what="two jobs")
    code, out = running.terminate()

    assert code == 0
    assert "job 2 done" in out
    assert "worker loop stopped after" in out


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAIL_MODE": "sometimes"}, "FAIL_MODE='sometimes'"),
        ({"SLOW_MS": "fast"}, "SLOW_MS='fast'"),
        ({"PORT": "99999"}, "PORT=99999"),
    ],
)
def test_bad_switches_stop_the_app_with_a_clear_message(
    start_app: StartApp, env: dict[str, str], message: str
) -> None:
    running = start_app("api", env, wait=False)

    out, _ = running.proc.communicate(timeout=10)

    assert running.proc.returncode == 2
    assert message in out


def test_port_in_use_exits_1(start_app: StartApp) -> None:
    first = start_app("worker")
    second = start_app("worker", {"PORT": str(first.port)}, wait=False)

    out, _ = second.proc.communicate(timeout=10)

    # The worker loop had started before the bind failed; it must not keep the process alive.
    assert second.proc.returncode == 1
    assert "cannot listen" in out


def test_worker_journal_in_data_dir(start_app: StartApp, tmp_path: Path) -> None:
    running = start_app("worker", {"WORK_INTERVAL_MS": "50", "DATA_DIR": str(tmp_path)})
    eventually(lambda: jobs_done(http_get(running.url + "/").body) >= 2, what="two jobs")
    code, _ = running.terminate()

    lines = (tmp_path / "jobs.log").read_text().splitlines()
    assert code == 0
    assert len(lines) >= 2
    assert lines[0].endswith(")") and " job 1 done (" in lines[0]

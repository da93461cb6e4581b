"""The HTTP layer over real sockets: every route, errors, limits, concurrency, lifecycle."""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from api_helpers import (
    CHAIN_ENTRY,
    PLAN,
    STATUS,
    StubHandle,
    parse_prometheus,
    raw_exchange,
    request,
)

from gitorch.api import server as api_server
from gitorch.api.server import MAX_BODY, ApiServer, parse_listen
from gitorch.diff.render.markdown import render_markdown
from gitorch.diff.render.text import render_plain
from gitorch.errors import ConfigError, Diagnostic, ManifestInvalid, RefNotFound, StateError
from gitorch.state.audit_chain import chain_entry_of


def test_healthz_ok_and_unhealthy(server: ApiServer, handle: StubHandle) -> None:
    reply = request(server.address, "GET", "/healthz")
    assert (reply.status, reply.json()) == (200, {"ok": True})
    handle.ok, handle.reason = False, "state store locked by pid 42"
    reply = request(server.address, "GET", "/healthz")
    assert reply.status == 503
    assert reply.json() == {"ok": False, "reason": "state store locked by pid 42"}


def test_status_is_the_handles_document(server: ApiServer) -> None:
    reply = request(server.address, "GET", "/api/v1/status")
    assert reply.status == 200
    assert reply.json() == STATUS
    assert reply.headers["cache-control"] == "no-store"


def test_status_indented_as_the_cli_prints_it_and_who_answered(server: ApiServer) -> None:
    """``?indent=2``: the text ``gitorch status --format json`` prints (a local status
    writes the daemon's answer as it comes); ``Gitorch-Pid`` names the answering process."""
    reply = request(server.address, "GET", "/api/v1/status?indent=2")
    assert reply.status == 200
    assert reply.body.decode() == json.dumps(STATUS, indent=2, ensure_ascii=False) + "\n"
    assert reply.headers["gitorch-pid"] == str(os.getpid())
    compact = request(server.address, "GET", "/api/v1/status")
    assert compact.body.count(b"\n") == 1 and compact.json() == STATUS


def test_history_passes_service_and_limit(server: ApiServer, handle: StubHandle) -> None:
    assert request(server.address, "GET", "/api/v1/history").status == 200
    reply = request(server.address, "GET", "/api/v1/history?service=web&limit=5")
    assert reply.status == 200
    assert reply.json()[0]["service"] == "web"
    request(server.address, "GET", "/api/v1/history?service=")
    assert handle.history_calls == [(None, 20), ("web", 5), (None, 20)]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=-1", "limit=abc", "limit=1001", "limit=1&limit=2"]
)
def test_history_rejects_bad_parameters(server: ApiServer, handle: StubHandle, query: str) -> None:
    reply = request(server.address, "GET", f"/api/v1/history?{query}")
    assert reply.status == 400
    assert "limit" in reply.json()["error"]
    assert handle.history_calls == []


def test_plan_passes_ref(server: ApiServer, handle: StubHandle) -> None:
    assert request(server.address, "GET", "/api/v1/plan").json() == PLAN.to_json()
    assert request(server.address, "GET", "/api/v1/plan?ref=feature%2Fx").status == 200
    assert handle.plan_calls == [None, "feature/x"]


def test_nodes_are_the_handles_rows(server: ApiServer) -> None:
    reply = request(server.address, "GET", "/api/v1/nodes")
    assert (reply.status, reply.json()) == (
        200,
        {"nodes": [{"name": "node-a", "condition": "Ready"}]},
    )
    assert request(server.address, "POST", "/api/v1/nodes").status == 405


def test_drain_and_uncordon_a_node(server: ApiServer, handle: StubHandle) -> None:
    reply = request(server.address, "POST", "/api/v1/nodes/node-a/drain")
    assert (reply.status, reply.json()["message"]) == (202, "node node-a draining")
    reply = request(server.address, "POST", "/api/v1/nodes/node-a/uncordon")
    assert (reply.status, reply.json()["message"]) == (202, "node node-a schedulable again")
    assert handle.drains == [("node-a", True, None), ("node-a", False, None)]
    assert handle.triggers[-2:] == ["drain node-a", "uncordon node-a"]
    missing = request(server.address, "POST", "/api/v1/nodes/node-z/drain")
    assert (missing.status, missing.json()) == (404, {"error": "no node named node-z"})
    assert request(server.address, "GET", "/api/v1/nodes/node-a/drain").status == 405
    assert request(server.address, "POST", "/api/v1/nodes/node-a/delete").status == 404


def test_a_missing_volume_is_reset_and_others_are_refused(
    server: ApiServer, handle: StubHandle
) -> None:
    done = request(server.address, "POST", "/api/v1/volumes/pgdata/reset")
    assert (done.status, done.json()) == (
        202,
        {"accepted": True, "message": "volume pgdata reset: the next pass makes it anew, empty"},
    )
    assert handle.resets == [("pgdata", None)]
    assert handle.triggers == ["reset volume pgdata"]
    bound = request(server.address, "POST", "/api/v1/volumes/data/reset")
    assert bound.status == 409 and bound.json()["error"].startswith("volume data is not missing")
    missing = request(server.address, "POST", "/api/v1/volumes/nope/reset")
    assert (missing.status, missing.json()) == (404, {"error": "no volume named 'nope'"})
    assert handle.triggers == ["reset volume pgdata"]  # a refused reset asks for no pass
    assert request(server.address, "GET", "/api/v1/volumes/pgdata/reset").status == 405
    assert request(server.address, "POST", "/api/v1/volumes/Bad_Name/reset").status == 404


def test_service_logs_pass_their_parameters(server: ApiServer, handle: StubHandle) -> None:
    path = "/api/v1/services/web/logs"
    assert request(server.address, "GET", path).json() == {"replicas": [], "warnings": []}
    request(server.address, "GET", f"{path}?tail=5&replica=web-2&previous=1")
    assert handle.log_calls == [("web", None, 100, False), ("web", "web-2", 5, True)]
    assert request(server.address, "GET", f"{path}?tail=x").status == 400
    assert request(server.address, "POST", path).status == 405
    missing = request(server.address, "GET", "/api/v1/services/nope/logs")
    assert (missing.status, missing.json()) == (404, {"error": "no service nope (services: web)"})
    assert request(server.address, "GET", "/api/v1/services/Web!/logs").status == 404


def follow(server: ApiServer, query: str = "") -> tuple[http.client.HTTPConnection, Any]:
    """``GET /api/v1/services/web/logs?follow=1``: the open connection and response."""
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("GET", f"/api/v1/services/web/logs?follow=1{query}")
    return conn, conn.getresponse()


def test_a_followed_log_streams_events_as_they_come(
    server: ApiServer, handle: StubHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_server, "LOG_KEEPALIVE_SECONDS", 0.2)
    conn, response = follow(server, "&tail=3&replica=web-2")
    try:
        assert response.status == 200
        assert response.getheader("Content-Type") == "application/x-ndjson"
        assert response.getheader("Content-Length") is None  # it ends when it is closed
        [stream] = handle.followed
        assert stream.asked == ("web", "web-2", 3)
        stream.send({"follow": "web-2"})
        assert json.loads(response.readline()) == {"follow": "web-2"}
        assert response.readline() == b"\n"  # quiet: a keep-alive line
        stream.send({"replica": "web-2", "line": 'GET "/" 200 \u00e9'})
        line = response.readline()
        while line == b"\n":
            line = response.readline()
        assert json.loads(line) == {"replica": "web-2", "line": 'GET "/" 200 \u00e9'}
    finally:
        response.close()  # the response holds the socket open too
        conn.close()
    # The client left: the next keep-alive write fails and the follow is closed.
    assert stream.closed.wait(5.0), "the daemon kept following for a client that left"


def test_following_logs_is_bounded_and_ends_with_the_server(
    server: ApiServer, handle: StubHandle
) -> None:
    path = "/api/v1/services/web/logs"
    both = request(server.address, "GET", f"{path}?follow=1&previous=1")
    assert (both.status, both.json()) == (400, {"error": "follow and previous do not go together"})
    missing = request(server.address, "GET", "/api/v1/services/nope/logs?follow=1")
    assert (missing.status, missing.json()) == (404, {"error": "no service nope (services: web)"})

    open_ones = [follow(server) for _ in range(api_server.MAX_LOG_FOLLOWERS)]
    try:
        assert all(response.status == 200 for _, response in open_ones)
        refused = request(server.address, "GET", f"{path}?follow=1")
        assert refused.status == 503 and "follow logs already" in refused.json()["error"]
        assert request(server.address, "GET", path).status == 200  # the last lines still work

        server.stop()

        assert all(stream.closed.wait(5.0) for stream in handle.followed)
        # Each one ends (after a keep-alive line at most).
        assert all(response.read().strip() == b"" for _, response in open_ones)
    finally:
        for conn, _ in open_ones:
            conn.close()


def test_audit_passes_its_filters_and_the_chain_reads_back(
    server: ApiServer, handle: StubHandle
) -> None:
    assert request(server.address, "GET", "/api/v1/audit").json() == [
        {"id": 1, "kind": "revision.started"}
    ]
    query = "service=web&kind=rollout.abort&since=1764000000.5&limit=0"
    assert request(server.address, "GET", f"/api/v1/audit?{query}").status == 200
    assert handle.audit_calls == [
        (None, None, None, 100),
        ("web", "rollout.abort", 1764000000.5, None),
    ]
    for bad in ("limit=-1", "limit=x", "since=soon", "since=nan"):
        reply = request(server.address, "GET", f"/api/v1/audit?{bad}")
        assert reply.status == 400, bad
    chain = request(server.address, "GET", "/api/v1/audit/chain").json()
    assert chain["highestId"] == 1
    assert [chain_entry_of(doc) for doc in chain["entries"]] == [CHAIN_ENTRY]


def test_plan_in_each_format_says_whether_it_changes_anything(server: ApiServer) -> None:
    """``gitorch plan --server``: the daemon renders the format asked for, and the headers
    carry the exit code's answer and the digest in every format."""
    for form, kind, text in (
        ("json", "application/json", None),
        ("markdown", "text/markdown; charset=utf-8", render_markdown(PLAN)),
        ("text", "text/plain; charset=utf-8", render_plain(PLAN)),
    ):
        reply = request(server.address, "GET", f"/api/v1/plan?format={form}")
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"] == kind
        assert reply.headers["gitorch-plan-changes"] == "true"
        assert reply.headers["gitorch-plan-digest"] == PLAN.digest
        if text is not None:
            assert reply.body.decode() == text
    assert "web:2" in render_plain(PLAN) and "node-a" in render_plain(PLAN)
    reply = request(server.address, "GET", "/api/v1/plan?ref=unchanged&format=text")
    assert reply.headers["gitorch-plan-changes"] == "false"
    reply = request(server.address, "GET", "/api/v1/plan?format=yaml")
    assert reply.status == 400
    assert reply.json() == {"error": "format must be one of json, markdown, text, not 'yaml'"}


def test_plan_errors_are_json_with_a_status(server: ApiServer, handle: StubHandle) -> None:
    handle.plan_error = RefNotFound("no branch, tag or commit named 'nope'")
    reply = request(server.address, "GET", "/api/v1/plan?ref=nope")
    assert reply.status == 400
    assert reply.json() == {"error": "no branch, tag or commit named 'nope'"}

    handle.plan_error = ManifestInvalid([Diagnostic("web.yaml", 3, 5, "bad image", "spec.image")])
    reply = request(server.address, "GET", "/api/v1/plan")
    assert reply.status == 422
    assert reply.json() == {
        "error": "1 problem in the manifests",
        "detail": ["web.yaml:3:5: spec.image: bad image"],
    }

    handle.plan_error = StateError("the state store is closed")
    assert request(server.address, "GET", "/api/v1/plan").status == 503


def test_unexpected_exception_is_500_without_traceback(
    server: ApiServer, handle: StubHandle, caplog: pytest.LogCaptureFixture
) -> None:
    handle.plan_error = RuntimeError("secret internals at /srv/x.py line 3")
    with caplog.at_level(logging.ERROR, logger="gitorch.api"):
        reply = request(server.address, "GET", "/api/v1/plan")
    assert reply.status == 500
    assert reply.json() == {"error": "internal error (see the daemon log)"}
    assert b"Traceback" not in reply.body and b"internals" not in reply.body
    # ...but the log has it, for whoever runs the daemon.
    _wait_for(lambda: any(r.exc_info for r in caplog.records))


def test_metrics_route_serves_the_exposition_format(server: ApiServer, handle: StubHandle) -> None:
    handle.metrics.reconcile_total.inc(result="succeeded")
    handle.metrics.reconcile_duration_seconds.observe(1.5)
    handle.metrics.set_revision("abc123")
    reply = request(server.address, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_prometheus(reply.body.decode())
    assert ("gitorch_reconcile_total", {"result": "succeeded"}, 1.0) in (
        families["gitorch_reconcile_total"].samples
    )
    assert families["gitorch_revision_info"].samples == [
        ("gitorch_revision_info", {"revision": "abc123"}, 1.0)
    ]


def test_reconcile_route_triggers(server: ApiServer, handle: StubHandle) -> None:
    reply = request(server.address, "POST", "/api/v1/reconcile")
    assert reply.status == 202
    assert reply.json() == {"accepted": True, "reason": "api request"}
    body = json.dumps({"reason": "apply --server"}).encode()
    assert request(server.address, "POST", "/api/v1/reconcile", body).status == 202
    assert handle.triggers == ["api request", "api request: apply --server"]


@pytest.mark.parametrize("body", [b"{not json", b'{"reason": 3}', b'{"reason": "a\\nb"}'])
def test_reconcile_rejects_bad_bodies(server: ApiServer, handle: StubHandle, body: bytes) -> None:
    reply = request(server.address, "POST", "/api/v1/reconcile", body)
    assert reply.status == 400
    assert "error" in reply.json()
    assert handle.triggers == []


def test_unknown_path_is_404(server: ApiServer) -> None:
    for path in ("/", "/api/v1/statuses", "/api/v2/status", "/healthz/"):
        reply = request(server.address, "GET", path)
        assert reply.status == 404, path
        assert reply.json()["error"].startswith("no such endpoint")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/api/v1/status", "GET"),
        ("DELETE", "/healthz", "GET"),
        ("PUT", "/metrics", "GET"),
        ("GET", "/api/v1/webhook", "POST"),
        ("GET", "/api/v1/reconcile", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(
    server: ApiServer, handle: StubHandle, method: str, path: str, allow: str
) -> None:
    reply = request(server.address, method, path)
    assert reply.status == 405
    assert reply.headers["allow"] == allow
    assert "not allowed" in reply.json()["error"]
    assert handle.triggers == []


def test_body_over_the_limit_is_413_before_it_is_read(
    server: ApiServer, handle: StubHandle
) -> None:
    # Only the headers are sent: the answer must come from Content-Length alone.
    head = (
        f"POST /api/v1/reconcile HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY * 100}\r\n\r\n"
    ).encode()
    answer = raw_exchange(server.address, head)
    assert answer.startswith(b"HTTP/1.0 413 ")
    assert b'{"error": "request body over 1048576 bytes"}' in answer
    assert handle.triggers == []


def test_body_one_byte_over_is_413_and_exactly_the_limit_is_accepted(
    server: ApiServer, handle: StubHandle
) -> None:
    reply = request(server.address, "POST", "/api/v1/reconcile", b" " * (MAX_BODY + 1))
    assert reply.status == 413
    assert handle.triggers == []
    reply = request(server.address, "POST", "/api/v1/reconcile", b" " * MAX_BODY)
    assert reply.status == 202
    assert handle.triggers == ["api request"]


def test_malformed_requests_get_json_errors(server: ApiServer) -> None:
    answer = raw_exchange(server.address, b"GET / x HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ")
    assert answer.split(b"\r\n\r\n", 1)[1].startswith(b'{"error"')
    chunked = (
        b"POST /api/v1/reconcile HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    assert raw_exchange(server.address, chunked).startswith(b"HTTP/1.0 411 ")
    short_body = b"POST /api/v1/reconcile HTTP/1.1\r\nHost: x\r\nContent-Length: x1\r\n\r\n"
    assert raw_exchange(server.address, short_body).startswith(b"HTTP/1.0 400 ")


def test_head_is_405_without_a_body(server: ApiServer) -> None:
    reply = request(server.address, "HEAD", "/healthz")
    assert reply.status == 405
    assert reply.body == b""


def test_twenty_parallel_requests_are_served_concurrently(
    server: ApiServer, handle: StubHandle
) -> None:
    # Every status() call waits at a barrier of 20: it only opens if all 20 requests are
    # being handled at the same time (a serial server would time out at the barrier).
    barrier = threading.Barrier(20, timeout=5)
    handle.status_hook = barrier.wait
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(
            pool.map(lambda _: request(server.address, "GET", "/api/v1/status"), range(20))
        )
    assert [r.status for r in replies] == [200] * 20
    assert all(r.json() == STATUS for r in replies)


def test_parallel_mixed_routes_keep_their_answers_apart(
    server: ApiServer, handle: StubHandle
) -> None:
    def one(i: int) -> tuple[int, object]:
        if i % 2:
            reply = request(server.address, "GET", f"/api/v1/history?limit={i}")
            return i, reply.json()[0]["limit"]
        reply = request(
            server.address, "POST", "/api/v1/reconcile", json.dumps({"reason": str(i)}).encode()
        )
        return i, reply.json()["reason"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(40)))
    for i, answer in results:
        assert answer == (i if i % 2 else f"api request: {i}")
    assert sorted(handle.triggers) == sorted(f"api request: {i}" for i in range(0, 40, 2))


def test_one_debug_log_line_per_request(
    server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="gitorch.api"):
        request(server.address, "GET", "/api/v1/status?x=1")
        request(server.address, "GET", "/nope")
        _wait_for(lambda: len(_request_records(caplog)) >= 2)
    records = _request_records(caplog)
    assert [(r.method, r.path, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("GET", "/api/v1/status", 200),
        ("GET", "/nope", 404),
    ]
    assert all(r.levelno == logging.DEBUG and r.duration_ms >= 0 for r in records)  # type: ignore[attr-defined]


def test_stop_is_prompt_and_closes_the_port(handle: StubHandle) -> None:
    api = ApiServer(handle, "127.0.0.1:0")
    api.start()
    address = api.address
    assert request(address, "GET", "/healthz").status == 200
    started = time.monotonic()
    api.stop()
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()
    api.stop()  # idempotent


def test_a_port_in_use_is_a_config_error(server: ApiServer, handle: StubHandle) -> None:
    host, port = server.address
    other = ApiServer(handle, f"{host}:{port}")
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        other.start()


def test_ipv6_loopback(handle: StubHandle) -> None:
    if not socket.has_ipv6:
        pytest.fail("this Python has no IPv6 support")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this host")  # a kernel without IPv6 is a host fact, not a bug
    with ApiServer(handle, "[::1]:0") as api:
        assert api.url.startswith("http://[::1]:")
        assert request(api.address, "GET", "/healthz").status == 200


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:7420", ("127.0.0.1", 7420)),
        (":8080", ("0.0.0.0", 8080)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["7420", "host:", "host:port", "::1:80", "h:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(listen)


def _request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gitorch.api" and hasattr(r, "status")]


def _wait_for(check: object, timeout: float = 5.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_service_actions_promote_and_abort(server: ApiServer, handle: StubHandle) -> None:
    reply = request(server.address, "POST", "/api/v1/services/web/promote")
    assert reply.status == 202
    assert reply.json() == {"accepted": True, "message": "promote of web requested"}
    assert request(server.address, "POST", "/api/v1/services/web/abort").status == 202
    refused = request(server.address, "POST", "/api/v1/services/api/promote")
    assert refused.status == 409
    assert refused.json()["error"] == "api has no rollout"
    assert handle.actions == [("web", "promote"), ("web", "abort"), ("api", "promote")]
    assert handle.triggers == ["promote web", "abort web"]  # refused: no reconcile asked
    assert request(server.address, "GET", "/api/v1/services/web/promote").status == 405
    assert request(server.address, "POST", "/api/v1/services/web/restart").status == 404
    assert request(server.address, "POST", "/api/v1/services/Bad_Name/promote").status == 404

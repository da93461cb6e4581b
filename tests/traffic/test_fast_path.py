"""The short ways of the built-in balancer's fast path (gitorch/traffic/builtin/fast.py):
each one gives, byte for byte, what the general rules give, or declines.

The fast path sends the common request on as its bytes came (less the empty line, plus
the forwarding headers) and the common answer on as it came; these tests hold those
short ways against ``backend_request`` and ``response_out``, and the one-step head
parsers against the two steps they replace. End to end, the same requests and answers
go through a real balancer in test_http_proxy.py (smuggling forms included)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitorch.traffic import _http
from gitorch.traffic.builtin.backends import BackendState, ServiceState, Upstream
from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.builtin.fast import (
    _FRAMED,
    _NOT_AS_RECEIVED,
    _STREAMED,
    NO_BODY,
    FastClient,
    forward_tail,
    quick_backend_request,
)
from gitorch.traffic.builtin.http1 import answer_as_received, response_out
from gitorch.traffic.builtin.timing import RETIRE_GRACE, Timeouts
from gitorch.traffic.table import Backend, Route

_PIECES = [b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", b"Host: a", b"Content-Length: 1", b"\r\n"]
_PIECES += [b"\n", b"\r", b" ", b":", b"\t", b"x", b"Transfer-Encoding: chunked", b"HTTP/1.0"]


def _outcome(step: object) -> object:
    try:
        return step()  # type: ignore[operator]
    except (_http.NotSimple, _http.BadMessage) as exc:
        return type(exc).__name__


def _fields(head: _http.Head) -> tuple[object, ...]:
    return tuple(getattr(head, name) for name in (*type(head).__slots__, "block", "special"))


@given(st.lists(st.sampled_from(_PIECES), max_size=12))
def test_taking_a_head_in_one_step_is_splitting_then_parsing_it(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    for take, parse in (
        (_http.take_request, _http.request_head_of),
        (_http.take_response, _http.response_head_of),
    ):

        def two_steps(parse: object = parse) -> object:
            split = _http.split_head(data)
            if split is None:
                return None
            line, block, end = split
            return _fields(parse(line, block)), end  # type: ignore[operator]

        def one_step(take: object = take) -> object:
            taken = take(data)  # type: ignore[operator]
            return None if taken is None else (_fields(taken[0]), taken[1])

        assert _outcome(one_step) == _outcome(two_steps)


@pytest.fixture(scope="module")
def lb() -> Iterator[BuiltinLoadBalancer]:
    with BuiltinLoadBalancer("10.0.0.1") as balancer:
        yield balancer


_QUICK = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\nX-Y: z\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n",
    b"DELETE /item HTTP/1.1\r\nHost: a\r\nCookie: a=b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:   spaced  \r\n\r\n",
]
#: Declined: the general rules change more of these heads than the short way would.
_GENERAL = [
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: https\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: TE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET / RTSP/1.1\r\nHost: a\r\n\r\n",  # llhttp reads version 1.1 there too
    b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n",
]


def test_the_short_way_declines_every_request_with_a_body_or_streamed() -> None:
    """FastClient._next asks quick_backend_request first: a request it takes must have no
    body framing and nothing that takes it to the streams."""
    assert _FRAMED | _STREAMED <= _NOT_AS_RECEIVED


@pytest.mark.parametrize("head", _QUICK + _GENERAL)
@pytest.mark.parametrize("tls", [False, True])
def test_the_common_request_goes_on_as_the_general_rules_make_it(
    lb: BuiltinLoadBalancer, head: bytes, tls: bool
) -> None:
    taken = _http.take_request(head + b"next")
    assert taken is not None
    parsed, end = taken
    assert end == len(head)
    quick = quick_backend_request(head + b"next", end, parsed, forward_tail("192.0.2.7", tls))
    general = lb.backend_request(parsed, NO_BODY, "192.0.2.7", tls)
    if head in _QUICK:
        assert quick == general
    else:
        assert quick is None


_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 404 Not Found"]
_LINES += [b"HTTP/1.0 200 OK", b"HTTP/1.1 500 Oops", b"HTTP/1.1 204 No Content"]
_LINES += [b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 200 OK\t", b"HTTP/1.1 201 Cr\xe9\xe9"]
_BLOCKS = [b"Content-Length: 5\r\nContent-Type: text/plain\r\n", b"content-length: 0\r\n"]
_BLOCKS += [b"Content-Length: 05\r\n", b"Content-Length: 5\r\nConnection: close\r\n"]
_BLOCKS += [b"Content-Length: 5\r\nKeep-Alive: timeout=5\r\n", b"Transfer-Encoding: chunked\r\n"]
_BLOCKS += [b"X-A: b\r\n", b"Content-Length: 70000\r\n", b"Content-Length: 5, 5\r\n"]


@pytest.mark.parametrize("line", _LINES)
@pytest.mark.parametrize("block", _BLOCKS)
@pytest.mark.parametrize(
    ("request_head", "keep", "extra"),
    [
        (b"GET / HTTP/1.1", True, []),
        (b"HEAD / HTTP/1.1", True, []),
        (b"GET / HTTP/1.0", True, []),
        (b"GET / HTTP/1.1", False, []),
        (b"GET / HTTP/1.1", True, [("Set-Cookie", "v=1")]),
    ],
)
def test_the_common_answer_goes_on_as_it_came_only_when_the_general_rules_keep_it(
    line: bytes,
    block: bytes,
    request_head: bytes,
    keep: bool,
    extra: _http.Headers,
) -> None:
    request = _http.request_head_of(request_head, b"Host: a\r\n")
    data = line + b"\r\n" + block + b"\r\n" + b"hello"
    try:
        taken = _http.take_response(data)
    except _http.BadMessage:
        return  # refused before any short way is asked
    assert taken is not None
    response, end = taken
    length = answer_as_received(data, end, response, request, keep, extra)
    out = response_out(request, response, keep, extra)
    if length >= 0:
        assert out.head == data[:end]
        assert (out.kind, out.length, out.client_keep, out.backend_keep) == (
            "length",
            length,
            True,
            True,
        )
    # The common answer itself is taken the short way.
    common = (line, block, request_head, keep, extra) == (
        b"HTTP/1.1 200 OK",
        _BLOCKS[0],
        b"GET / HTTP/1.1",
        True,
        [],
    )
    assert not common or length == 5


class _Transport:
    """What a protocol asks of a socket transport, and what was written to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Host:
    """The balancer, as far as a fast-path client on pooled connections asks of it."""

    def __init__(self) -> None:
        self.deadlines: set[object] = set()
        self.timeouts = Timeouts()

    def forget_if_gone(self, svc: ServiceState, state: BackendState) -> None:
        pass


def _client_on(*requests: bytes) -> tuple[FastClient, ServiceState, _Transport]:
    route = Route("svc", 8080, "http", (Backend("b1", "127.0.0.1:9"),))
    svc = ServiceState(route)
    svc.set_route(route)
    upstream = Upstream()
    upstream.connection_made(_Transport())  # type: ignore[arg-type]
    svc.backends["b1"].fast_idle.append(upstream)
    client = FastClient(_Host(), svc)  # type: ignore[arg-type]
    svc.connections += 1
    transport = _Transport()
    client.connection_made(transport)  # type: ignore[arg-type]
    for request in requests:
        client.data_received(request)
    return client, svc, transport


@pytest.mark.parametrize(
    ("requests", "waits_for"),
    [
        ((), "head"),
        ((b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",), "answer"),
        ((b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab",), "body"),
    ],
)
def test_a_retired_route_shortens_the_wait_for_a_head_only(
    requests: tuple[bytes, ...], waits_for: str
) -> None:
    """A fast-path client is its route's head waiter for the connection's life; a retired
    route brings forward only the wait for a next head, never the wait for an answer or
    for a request's body (those end the request first, then the connection)."""
    client, svc, transport = _client_on(*requests)
    assert client.busy == (waits_for == "answer") and (client.pending is None) == (
        waits_for != "body"
    )
    waited = client.at
    assert waited > time.monotonic() + RETIRE_GRACE
    svc.retire()
    if waits_for == "head":
        assert client.at <= time.monotonic() + RETIRE_GRACE
    else:
        assert client.at == waited
    if waits_for == "answer":  # the answer goes out, then the connection closes
        client.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[union-attr]
        assert transport.written[-1].endswith(b"\r\n\r\nok") and transport.closed

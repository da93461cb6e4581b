"""Pure parts of the data plane: backend choice, latency figures, body framing rules."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from types import MappingProxyType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gitorch.traffic import _http
from gitorch.traffic.choice import Candidate, Chooser
from gitorch.traffic.figures import (
    LATENCY_BOUNDS_MS,
    BackendFigures,
    bucket_of,
    by_version,
    empty_histogram,
    quantile,
)
from gitorch.traffic.routes import fenced
from gitorch.traffic.table import Backend, Fence, Route, RoutingTable
from gitorch.traffic.wire import table_from_json, table_to_json

NOW = 1000.0  # the caller's monotonic clock


def service(*weights: int, draining: tuple[int, ...] = ()) -> Chooser[Candidate]:
    backends = tuple(
        Backend(f"b{i}", f"127.0.0.1:{1000 + i}", weight=w, draining=i in draining)
        for i, w in enumerate(weights)
    )
    svc = Chooser(Route("s", 80, "http", ()), Candidate)
    svc.set_route(Route("s", 80, "http", backends))
    return svc


def test_smooth_weighted_round_robin_interleaves() -> None:
    svc = service(5, 1, 1)
    order = [svc.pick(set(), now=NOW).backend.id for _ in range(7)]  # type: ignore[union-attr]
    # nginx's smooth sequence for 5/1/1: the heavy one never runs 5 in a row.
    assert order == ["b0", "b0", "b1", "b0", "b2", "b0", "b0"]


@given(st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=6))
def test_one_cycle_of_total_weight_picks_each_exactly_its_weight(weights: list[int]) -> None:
    svc = service(*weights)
    counts = Counter(svc.pick(set(), now=NOW).backend.id for _ in range(sum(weights)))  # type: ignore[union-attr]
    assert counts == {f"b{i}": w for i, w in enumerate(weights)}


def test_pick_skips_tried_draining_and_zero_weight() -> None:
    svc = service(100, 100, 0, 100, draining=(3,))
    assert {svc.pick({"b0"}, now=NOW).backend.id for _ in range(5)} == {"b1"}  # type: ignore[union-attr]
    # Every active one tried: any active one may be picked again.
    assert svc.pick({"b0", "b1"}, now=NOW) is not None
    assert service(0).pick(set(), now=NOW) is None
    assert service(100, draining=(0,)).pick(set(), now=NOW) is None
    assert svc.attempts() == 2


def test_backend_in_cooldown_is_passed_over_while_others_exist() -> None:
    svc = service(100, 100)
    svc.backends["b0"].down_until = float("inf")
    assert {svc.pick(set(), now=NOW).backend.id for _ in range(4)} == {"b1"}  # type: ignore[union-attr]
    svc.backends["b1"].down_until = float("inf")
    assert svc.pick(set(), now=NOW) is not None  # all cooling down: still try rather than refuse


def test_quantiles_from_buckets() -> None:
    counts = empty_histogram()
    for ms in [4.0] * 90 + [40.0] * 9 + [400.0]:
        counts[bucket_of(ms)] += 1
    assert 3 <= quantile(counts, 0.5) <= 5  # type: ignore[operator]
    assert 3 <= quantile(counts, 0.9) <= 5  # type: ignore[operator]
    assert 30 <= quantile(counts, 0.99) <= 50  # type: ignore[operator]
    assert 300 <= quantile(counts, 1.0) <= 500  # type: ignore[operator]
    assert quantile(empty_histogram(), 0.5) is None
    over = empty_histogram()
    over[-1] = 3
    assert quantile(over, 0.99) == LATENCY_BOUNDS_MS[-1]


def test_by_version_and_since() -> None:
    def fig(bid: str, version: str, requests: int, errors: int, bucket: int) -> BackendFigures:
        latency = empty_histogram()
        latency[bucket] = requests
        return BackendFigures(bid, version, 1, requests, errors, 0, tuple(latency))

    before = by_version(
        [fig("a", "v1", 10, 1, 2), fig("b", "v1", 10, 0, 2), fig("c", "v2", 5, 0, 9)]
    )
    after = by_version(
        [fig("a", "v1", 30, 1, 2), fig("b", "v1", 30, 2, 2), fig("c", "v2", 5, 0, 9)]
    )
    assert after["v1"].requests == 60 and after["v1"].backends == 2 and after["v1"].in_flight == 2
    window = after["v1"].since(before["v1"])
    assert window.requests == 40 and window.errors_5xx == 2
    assert window.success_rate == pytest.approx(0.95)
    assert after["v2"].since(before["v2"]).success_rate is None


@pytest.mark.parametrize(
    ("headers", "framing"),
    [
        ([], ("none", 0)),
        ([("Content-Length", "12")], ("length", 12)),
        ([("Content-Length", "12"), ("content-length", "12")], ("length", 12)),
        ([("Transfer-Encoding", "chunked")], ("chunked", 0)),
    ],
)
def test_body_framing(headers: _http.Headers, framing: tuple[str, int]) -> None:
    assert _http.body_framing(headers) == framing


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "12"), ("Transfer-Encoding", "chunked")],  # smuggling classic
        [("Content-Length", "12"), ("Content-Length", "13")],
        [("Content-Length", "-1")],
        [("Content-Length", "1e3")],
        [("Transfer-Encoding", "chunked, gzip")],
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
    ],
)
def test_ambiguous_framing_is_refused(headers: _http.Headers) -> None:
    with pytest.raises(_http.BadMessage):
        _http.body_framing(headers)


def test_end_to_end_drops_hop_by_hop_and_connection_named_headers() -> None:
    headers = [
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Host", "a"),
        ("X-Kept", "2"),
    ]
    assert _http.end_to_end(headers) == [("Host", "a"), ("X-Kept", "2")]


_PIECES = [b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", b"Host: a", b"X-A:b", b"\r\n", b"\n", b"\r"]
_PIECES += [b" ", b":", b"\t", b"x"]


def _read_on_a_stream(data: bytes) -> tuple[bytes, bytes, bytes] | str:
    """What the stream reader makes of ``data`` (then end of file): (start line, header
    section, bytes left), or the name of what it raised."""

    async def read() -> tuple[bytes, bytes, bytes] | str:
        reader = asyncio.StreamReader(limit=_http.MAX_HEAD)
        reader.feed_data(data)
        reader.feed_eof()
        try:
            line, block = await _http._read_raw_head(reader)
        except (_http.PeerClosed, _http.BadMessage) as exc:
            return type(exc).__name__
        return line, block, await reader.read()

    return asyncio.run(read())


@given(st.lists(st.sampled_from(_PIECES), max_size=14))
# A header line of one byte: the empty line after it starts two bytes past the start
# line's LF, where the stream reader does not look for it (it reads two bytes first).
@example([b"GET / HTTP/1.1", b"\r\n", b"x", b"\r\n", b"\r\n"])
@example([b"GET / HTTP/1.1", b"\r\n", b"x", b"\r\n", b"\r\n", b"\r\n"])
@example([b"GET / HTTP/1.1", b"\r\n", b"\r\n", b"\r\n"])
def test_split_head_reads_a_buffer_as_the_stream_reader_does(pieces: list[bytes]) -> None:
    """The fast path takes heads off a buffer (``split_head``): what it takes is what the
    stream reader would have read, byte for byte, and what it leaves to the stream reader
    (NotSimple) is read there by the same rules as ever."""
    data = b"".join(pieces)
    try:
        split = _http.split_head(data)
    except _http.NotSimple:
        return
    on_stream = _read_on_a_stream(data)
    if split is None:
        assert on_stream == "PeerClosed"  # incomplete: the stream reader needed more too
    else:
        line, block, end = split
        assert on_stream == (line, block, data[end:])


def test_split_head_leaves_bare_lf_empty_lines_and_long_heads_to_the_stream_reader() -> None:
    for data in (
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",
        b"GET /\r HTTP/1.1\r\n\r\n",
        b"GET /" + b"a" * _http.MAX_LINE + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (_http.SPLIT_LIMIT // 6),
    ):
        with pytest.raises(_http.NotSimple):
            _http.split_head(data)
    assert _http.split_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest") == (
        b"GET / HTTP/1.1",
        b"Host: a\r\n",
        len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
    )
    assert _http.split_head(b"GET / HTTP/1.1\r\nHost: a\r\n") is None


@pytest.mark.parametrize(
    "block",
    [
        "Content-Length: 5\r\nContent-Type: text/plain\r\n",
        "Content-Length: 05\r\n",
        "Content-Length: 0\r\n",
        "Content-Length: 5\r\nConnection: close\r\n",
        "Transfer-Encoding: chunked\r\n",
        "X-A: b\r\n",
    ],
)
@pytest.mark.parametrize("status", [200, 204, 304])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("keep", [True, False])
def test_the_common_answer_gets_the_head_the_general_rules_give(
    block: str, status: int, method: str, keep: bool
) -> None:
    """``response_out`` takes a short way for the common answer: the same result as the
    general rules (reached here through an extra header that the short way declines,
    then taken off again)."""
    from gitorch.traffic.builtin.http1 import response_out

    request = _http.request_head_of(f"{method} / HTTP/1.1".encode(), b"Host: a\r\n")
    response = _http.response_head_of(f"HTTP/1.1 {status} OK".encode(), block.encode())
    quick = response_out(request, response, keep, [])
    general = response_out(request, response, keep, [("X-Extra", "1")])
    assert quick._replace(head=b"") == general._replace(head=b"")
    assert quick.head == general.head.replace(b"X-Extra: 1\r\n", b"")


def test_a_fenced_table_drains_own_backends_only_where_another_host_serves() -> None:
    own, other, alone = (
        Backend("own", "10.0.0.2:1"),
        Backend("other", "10.0.0.3:1"),
        Backend("alone", "10.0.0.2:2"),
    )
    gone = Backend("gone", "10.0.0.3:2", draining=True)
    shared = Route("shared", 7001, backends=(own, other))
    lonely = Route("lonely", 7002, backends=(alone, gone))  # the other host's one drains
    table = RoutingTable(
        MappingProxyType({"shared": shared, "lonely": lonely}),
        fence=Fence(5.0, frozenset({"own", "alone"})),
    )
    out = fenced(table)
    assert [(b.id, b.draining) for b in out.routes["shared"].backends] == [
        ("own", True),
        ("other", False),
    ]
    assert out.routes["lonely"] == lonely
    assert fenced(RoutingTable(table.routes)) == RoutingTable(table.routes)  # no fence
    # The fence crosses the wire with the table.
    assert table_from_json(json.loads(json.dumps(table_to_json(table)))) == table

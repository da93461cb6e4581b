"""The fast path of the built-in balancer's http routes: a client connection served by
callbacks (no coroutine or await per request), handed to the streams path for anything
else."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from time import monotonic
from typing import Any, Protocol, cast

from gitorch.traffic import _http
from gitorch.traffic.builtin.backends import (
    BackendState,
    PooledStream,
    ServiceState,
    Upstream,
    streams_on,
)
from gitorch.traffic.builtin.http1 import (
    REWRITTEN,
    Failure,
    RequestBody,
    ResponseOut,
    answer_as_received,
    count_response,
    may_retry,
    response_out,
)
from gitorch.traffic.builtin.timing import (
    PIPELINE_LIMIT,
    POOL_SIZE,
    RETIRE_GRACE,
    Deadline,
    Timeouts,
)


class FastPathHost(Protocol):
    """What a :class:`FastClient` asks of its balancer
    (:class:`~gitorch.traffic.builtin.balancer.BuiltinLoadBalancer`): its loop, timeouts
    and deadline sweep, backend connections and request heads, and the streams path that
    takes a connection over."""

    loop: asyncio.AbstractEventLoop
    timeouts: Timeouts
    deadlines: set[Deadline | FastClient]

    def backend_request(
        self,
        head: _http.RequestHead,
        body: RequestBody,
        client_ip: str,
        tls: bool,
        upgrade: str | None = None,
    ) -> bytes: ...

    async def connect_upstream(self, state: BackendState) -> Upstream | None: ...

    def forget_if_gone(self, svc: ServiceState, state: BackendState) -> None: ...

    def track(self, task: asyncio.Task[Any]) -> None: ...

    def serve_handed(
        self,
        svc: ServiceState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resume: Callable[[Deadline], Awaitable[bool]] | None = None,
    ) -> None: ...

    async def resume_response(
        self,
        svc: ServiceState,
        state: BackendState,
        head: _http.RequestHead,
        conn: PooledStream,
        response: _http.ResponseHead | None,
        started: float,
        client_keep: bool,
        extra: _http.Headers,
        writer: asyncio.StreamWriter,
        deadline: Deadline,
    ) -> bool: ...


class FastClient(asyncio.Protocol):
    """One client connection of an http route, served by callbacks: the fast path.

    Most requests are a head and a small body, answered by a head and a small body:
    this serves those without a coroutine, a stream or an await (a request head is
    taken off the bytes as they come and parsed, sent on a pooled :class:`Upstream` in
    one write; the answer goes back in one write): half the CPU per request of the
    streams (bench/README.md). The common request goes on as its bytes came
    (:func:`quick_backend_request`), the common answer too
    (:func:`~gitorch.traffic.builtin.http1.answer_as_received`). Heads are read by the
    same rules as on the streams (:func:`_http.take_request`). Everything else goes on on streams, on
    the same connection, as before: a request with a chunked, large or expected body
    or an Upgrade, a head the stream reader must read (bare LF, empty lines before it,
    very long), anything malformed (refused there, with the same answer), and a
    response that is streamed (chunked, large, or delimited by the close). Retries,
    timeouts (through the sweep of :class:`Deadline`), figures and draining are those
    of the stream path.
    """

    def __init__(self, lb: FastPathHost, svc: ServiceState) -> None:
        self.lb = lb
        self.svc = svc
        self.idle_timeout = lb.timeouts.client_idle  # (the balancer's are fixed)
        self.response_timeout = lb.timeouts.response
        self.transport: asyncio.Transport | None = None
        self.buffer = b""  # bytes: a request mostly comes in one piece, sliced, not copied
        self.client_ip = ""
        self.tls = svc.tls is not None
        self.forward_tail = b""  # the forwarding headers this connection's requests get
        self.made = False  # connection_made came: this protocol owns the connection
        self.gone = False  # the client connection is closed
        self.settled = False  # its count in svc.connections was given back
        self.handed = False  # handed over to the stream path
        self.eof = False
        self.reading_paused = False
        self.writing_paused = False
        self.at = 0.0  # monotonic deadline of the current wait, 0 when none
        self.pending: _http.RequestHead | None = None  # a head whose body is awaited
        self.pending_kind = "none"
        self.pending_length = 0
        # The request in flight (busy), and its current attempt.
        self.busy = False
        self.head: _http.RequestHead = NO_HEAD
        self.body = RequestBody("none", 0)
        self.request = b""
        self.client_keep = True
        self.version: str | None = None
        self.extra: _http.Headers = []
        self.tried: AbstractSet[str] = NOTHING_TRIED  # backends that failed this request
        self.failure = Failure.NO_BACKEND
        self.attempts_left = 0
        self.state: BackendState | None = None
        self.upstream: Upstream | None = None
        self.reused = False
        self.started = 0.0
        self.response: ResponseOut | None = None

    # ------------------------------------------------------------ client side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.made = True
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self.forward_tail = forward_tail(self.client_ip, self.tls)
        self.lb.deadlines.add(self)
        # A head waiter for the connection's life (shorten() acts only between requests).
        self.svc.head_waiters.add(self)
        self._next()

    def data_received(self, data: bytes) -> None:
        had = self.buffer
        buf = self.buffer = had + data if had else data
        if not self.busy:
            if had and self.pending is None and b"\n" not in data and len(buf) < _http.SPLIT_LIMIT:
                return  # a head ends with a line end: no new one can be whole yet
            self._next()
        elif len(self.buffer) > PIPELINE_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        if not self.busy:
            self._next()
        # The answer in flight may still be written (TLS cannot half-close: asyncio
        # closes it anyway and warns when asked not to, as StreamReaderProtocol knows).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._settle()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.busy:
            self._next()

    def shorten(self, at: float) -> None:
        """Bring the wait for a head forward to ``at`` (the route was removed): not the
        wait for an answer (busy) or for a request's body (pending)."""
        if self.at and not self.busy and self.pending is None:
            self.at = min(self.at, at)

    def expire_if_due(self, now: float) -> None:
        if self.at and self.at <= now:
            self.at = 0.0
            self._expired()

    def shut(self) -> None:
        """The balancer closes: end this connection and its request now."""
        if self.upstream is not None:
            self.upstream.client = None
            self.upstream.close()
        self._close()

    def _settle(self) -> None:
        """Give the connection's count back once it is closed and nothing is in flight."""
        if self.gone and not self.busy and not self.settled and not self.handed:
            self.settled = True
            self.svc.connections -= 1
            self.svc.head_waiters.discard(self)
            self.lb.deadlines.discard(self)

    def _close(self) -> None:
        if self.transport is not None and not self.gone:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.gone and not transport.is_closing():
            transport.write(data)

    def _next(self) -> None:
        """Take the next request from the buffer when it is whole (or hand over)."""
        if self.busy or self.handed or self.gone or self.writing_paused:
            return
        svc = self.svc
        buf = self.buffer
        head = self.pending
        if head is None:
            try:
                taken = _http.take_request(buf) if buf else None
            except (_http.NotSimple, _http.BadMessage):
                self._hand_over()  # read there, or refused there with the same answer
                return
            if taken is None:
                if self.eof:
                    if buf:
                        self._hand_over()  # an incomplete head: answered there
                    else:
                        self._close()
                    return
                if not self.at:
                    idle = RETIRE_GRACE if svc.closed else self.idle_timeout
                    self.at = monotonic() + idle
                return
            head, end = taken
            # The common request goes on as its bytes came: a head alone, nothing streamed
            # (quick_backend_request declines any header of _FRAMED or _STREAMED).
            request = quick_backend_request(buf, end, head, self.forward_tail)
            special = head.special
            if request is None and not _FRAMED.isdisjoint(special):
                try:
                    kind, length = head.framing()
                except _http.BadMessage:
                    self._hand_over()  # refused there, with the same answer
                    return
                if kind == "chunked" or length > _http.REPLAY_LIMIT:
                    self._hand_over()
                    return
            else:
                self.at = 0.0
                if request is None:
                    if not _STREAMED.isdisjoint(special):
                        self._hand_over()
                        return
                    request = self.lb.backend_request(head, NO_BODY, self.client_ip, self.tls)
                if len(buf) > end:
                    buf = self.buffer = buf[end:]
                    if self.reading_paused and len(buf) <= PIPELINE_LIMIT:
                        self.reading_paused = False
                        self.transport.resume_reading()  # type: ignore[union-attr]
                else:
                    self.buffer = b""
                self._start(head, NO_BODY, request)
                return
            if not _STREAMED.isdisjoint(special):
                self._hand_over()
                return
            buf = self.buffer = buf[end:]
            self.at = 0.0
            self.pending = head
            self.pending_kind = kind
            self.pending_length = length
        length = self.pending_length
        if len(buf) < length:
            if self.eof:
                self._close()  # the body was cut short
            elif not self.at:
                self.at = monotonic() + self.idle_timeout
            return
        self.at = 0.0
        if length:
            body = RequestBody(self.pending_kind, length, buf[:length])
            buf = self.buffer = buf[length:]
        else:
            body = RequestBody(self.pending_kind, 0)
        if self.reading_paused and len(buf) <= PIPELINE_LIMIT:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.pending = None
        request = self.lb.backend_request(head, body, self.client_ip, self.tls) + body.prefix
        self._start(head, body, request)

    def _hand_over(self) -> None:
        """Serve this connection on streams from here on (nothing is in flight)."""
        self.handed = True
        self.at = 0.0
        self.svc.head_waiters.discard(self)
        self.lb.deadlines.discard(self)
        reader, writer = self._streams()
        self.lb.serve_handed(self.svc, reader, writer)

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        transport = self.transport
        assert transport is not None
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()  # the stream reader pauses by its own measure
        reader, writer = streams_on(transport, self.buffer, self.eof, self.lb.loop)
        self.buffer = b""
        if self.writing_paused:
            cast(asyncio.StreamReaderProtocol, transport.get_protocol()).pause_writing()
        return reader, writer

    def _expired(self) -> None:
        upstream, state = self.upstream, self.state
        if upstream is None or state is None:
            self._close()  # a head or body that did not come in time
            return
        self._detach(upstream, state)
        upstream.close()
        if self.response is not None:
            self._end_attempt(state)
            self._end_request(False)  # the answer's body stopped coming: cut it
            return
        count_response(state, 504, self.started)
        self._end_attempt(state)
        self._write(
            _http.simple_response(
                504,
                "gateway timeout: the backend did not answer",
                close=True,
                head_only=self.head.method == "HEAD",
            )
        )
        self._end_request(False)

    # ------------------------------------------------------------ one request

    def _start(self, head: _http.RequestHead, body: RequestBody, request: bytes) -> None:
        """Serve one request: ``request`` is what goes to the backend (head and body)."""
        svc = self.svc
        connection = head.special.get("connection")
        if svc.closed:
            self.client_keep = False
        elif connection is None:
            self.client_keep = head.version >= (1, 1)
        else:
            tokens = _http.tokens_of(connection)
            self.client_keep = (
                "keep-alive" in tokens if head.version < (1, 1) else "close" not in tokens
            )
        self.busy = True
        self.head = head
        self.body = body
        self.request = request
        if svc.rules or svc.route.weights:
            version, cookie_version = svc.choose_version(head)
            self.version = version
            self.extra = (
                [("Set-Cookie", f"{svc.cookie_name}={cookie_version}; Path=/")]
                if cookie_version is not None
                else NO_EXTRA
            )
        else:  # what choose_version answers for a route with no rules and no weights
            self.version = None
            self.extra = NO_EXTRA
        self.tried = NOTHING_TRIED
        self.failure = Failure.NO_BACKEND
        active = len(svc.active)
        self.attempts_left = active if active > 2 else 2  # svc.attempts()
        self._attempt()

    def _attempt(self) -> None:
        svc = self.svc
        now = monotonic()
        state = svc.pick(self.tried, self.version, now=now)
        if state is None or self.attempts_left <= 0:
            self._give_up()
            return
        self.attempts_left -= 1
        state.in_flight += 1
        self.state = state
        self.started = now
        # After a failure, only fresh connections: the pool may hold more dead ones.
        if self.failure is Failure.NO_BACKEND:
            idle = state.fast_idle
            while idle:  # an idle connection that still looks open (Upstream.usable)
                upstream = idle.pop()
                if not upstream.lost and not upstream.transport.is_closing():  # type: ignore[union-attr]
                    self.reused = True
                    self._send(upstream, now)
                    return
                upstream.close()
        self.reused = False
        task = self.lb.loop.create_task(self.lb.connect_upstream(state))
        self.lb.track(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Upstream | None]) -> None:
        state = self.state
        assert state is not None
        upstream = None if task.cancelled() or task.exception() else task.result()
        if task.cancelled():
            self._end_attempt(state)
            self._end_request(False)  # the balancer closes
            return
        if upstream is None:
            self._failed(state, Failure.NOT_CONNECTED)
            return
        if upstream.lost:
            # Lost before this callback came (a backend killed right after the kernel
            # took the connection): nothing was sent, and nothing will ever be told of it
            # again, so the request must not wait on it for the response timeout. Counted
            # as a connection that failed (figures and cooldown).
            state.connect_failed()
            self._failed(state, Failure.NOT_CONNECTED)
            return
        self._send(upstream, monotonic())

    def _send(self, upstream: Upstream, now: float) -> None:
        # So that an unreachable backend's requests can be given up: self.state is set.
        self.state.busy.add(upstream)  # type: ignore[union-attr]
        upstream.client = self
        self.upstream = upstream
        self.response = None
        upstream.transport.write(self.request)  # type: ignore[union-attr]  # one segment
        self.at = now + self.response_timeout

    def on_backend_data(self, upstream: Upstream) -> None:
        """Bytes of the answer came: relay it when it is whole."""
        state = self.state
        if upstream is not self.upstream or state is None:
            return
        buf = upstream.buffer
        out = self.response
        if out is None:
            while True:
                try:
                    taken = _http.take_response(buf)
                except _http.NotSimple:
                    self._response_on_streams(None)
                    return
                except _http.BadMessage:
                    state.errors += 1
                    self._failed(state, Failure.PARTIAL_ANSWER, upstream)
                    return
                if taken is None:
                    return
                response, end = taken
                if response.status >= 200:
                    break
                buf = upstream.buffer = buf[end:]  # 1xx interim answers are skipped, as on streams
            now = count_response(state, response.status, self.started)
            if len(buf) == end + answer_as_received(
                buf, end, response, self.head, self.client_keep, self.extra
            ):
                # The common answer, whole in one read: on to the client as it came.
                self._answered(upstream, state, buf, True, True, now)
                return
            buf = upstream.buffer = buf[end:]
            out = response_out(self.head, response, self.client_keep, self.extra)
            if out.kind not in ("none", "length") or out.length > _http.COPY_SIZE:
                self._response_on_streams(response)
                return
            self.response = out
        length = out.length
        if len(buf) < length:
            return
        leftover = len(buf) > length  # more than the answer: never reuse such a connection
        data = out.head + buf[:length] if length else out.head
        reusable = out.backend_keep and not leftover
        self._answered(upstream, state, data, reusable, out.client_keep, monotonic())

    def _answered(
        self,
        upstream: Upstream,
        state: BackendState,
        data: bytes,
        reusable: bool,
        client_keep: bool,
        now: float,
    ) -> None:
        """The whole answer came: send it (``data``), pool the backend connection when
        ``reusable``, and go on with the client connection when ``client_keep``: the
        steps of :meth:`_write`, :meth:`_detach`, :meth:`_end_attempt` and
        :meth:`_end_request`, and the pooling, in one call (this runs once per request)."""
        transport = self.transport
        gone = self.gone
        if transport is not None and not gone and not transport.is_closing():
            transport.write(data)
        upstream.buffer = b""
        upstream.client = None
        self.upstream = None
        state.busy.discard(upstream)
        if (
            reusable
            and not state.removed
            and not state.backend.draining
            and not upstream.lost
            and not upstream.transport.is_closing()  # type: ignore[union-attr]
            and len(state.fast_idle) < POOL_SIZE
        ):
            upstream.idle_since = now
            state.fast_idle.append(upstream)
        else:
            upstream.close()
        state.in_flight -= 1
        self.state = None
        if state.removed:
            self.lb.forget_if_gone(self.svc, state)
        self.busy = False
        self.response = None
        svc = self.svc
        if gone:
            self.at = 0.0
            self._settle()
        elif not client_keep or svc.closed:
            self.at = 0.0
            self._close()
        elif self.buffer or self.eof or self.writing_paused:
            self.at = 0.0
            self._next()
        else:  # what _next does with nothing to read: wait for the next head
            self.at = now + self.idle_timeout

    def on_backend_lost(self, upstream: Upstream) -> None:
        """The backend closed before its whole answer came."""
        state = self.state
        if upstream is not self.upstream or state is None:
            return
        if self.response is not None:
            # The answer's head came and its body was cut. This path writes an answer
            # only once it is whole, so nothing reached the client: as for a head cut
            # halfway, a GET goes to another backend (a backend killed mid-answer costs
            # the client nothing), anything else is answered 502.
            self.response = None
            state.errors += 1
            self._failed(state, Failure.PARTIAL_ANSWER, upstream)
            return
        if upstream.abandoned:
            failure = Failure.ABANDONED
        elif upstream.buffer:
            failure = Failure.PARTIAL_ANSWER
        elif self.reused:
            failure = Failure.POOLED_DEAD  # a keep-alive race, not the backend's fault
        else:
            failure = Failure.SENT_NO_ANSWER
        if failure is not Failure.POOLED_DEAD:
            state.errors += 1
        self._failed(state, failure, upstream)

    def _failed(
        self, state: BackendState, failure: Failure, upstream: Upstream | None = None
    ) -> None:
        """An attempt ended without an answer: try another backend when it is safe."""
        if upstream is not None:
            self._detach(upstream, state)
            upstream.close()
        self.at = 0.0
        self._end_attempt(state)
        self.failure = failure
        if may_retry(failure, self.head.method, self.body):
            self.tried = {*self.tried, state.backend.id}
            self._attempt()
        else:
            self._give_up()

    def _give_up(self) -> None:
        if self.failure in (Failure.NO_BACKEND, Failure.NOT_CONNECTED):
            status, text = 503, f"no backend available for {self.svc.route.service}"
        else:
            status, text = 502, "bad gateway: the backend failed before answering"
        keep = self.client_keep
        head_only = self.head.method == "HEAD"
        self._write(_http.simple_response(status, text, close=not keep, head_only=head_only))
        self._end_request(keep)

    def _detach(self, upstream: Upstream, state: BackendState) -> None:
        upstream.client = None
        self.upstream = None
        state.busy.discard(upstream)

    def _end_attempt(self, state: BackendState) -> None:
        state.in_flight -= 1
        self.state = None
        if state.removed:
            self.lb.forget_if_gone(self.svc, state)

    def _end_request(self, keep: bool) -> None:
        self.busy = False
        self.at = 0.0
        self.response = None
        if self.gone:
            self._settle()
        elif keep and not self.svc.closed:
            self._next()
        else:
            self._close()

    def _response_on_streams(self, response: _http.ResponseHead | None) -> None:
        """Finish this request, and serve the connection from here on, on streams: the
        answer is streamed (or its head is one the stream reader must read)."""
        upstream, state = self.upstream, self.state
        assert upstream is not None and state is not None
        self._detach(upstream, state)
        if self.gone:  # nobody to stream it to
            upstream.close()
            self._end_attempt(state)
            self._end_request(False)
            return
        conn = upstream.to_streams(self.lb.loop)
        state.busy.add(conn)
        self.handed = True
        self.busy = False
        self.at = 0.0
        self.svc.head_waiters.discard(self)
        self.lb.deadlines.discard(self)
        reader, writer = self._streams()
        lb, svc, head = self.lb, self.svc, self.head
        started, client_keep, extra = self.started, self.client_keep, self.extra

        def resume(deadline: Deadline) -> Awaitable[bool]:
            return lb.resume_response(
                svc, state, head, conn, response, started, client_keep, extra, writer, deadline
            )

        self.state = None
        lb.serve_handed(svc, reader, writer, resume)


NO_HEAD = _http.RequestHead("GET", "/", (1, 1))
#: No backend tried yet (never changed: a failed attempt makes a set of its own).
NOTHING_TRIED: frozenset[str] = frozenset()
#: The body of a request that has none (never changed: shared by all of them).
NO_BODY = RequestBody("none", 0)
#: No header to add to the answer (never changed).
NO_EXTRA: _http.Headers = []
#: Request headers that take a request to the stream path.
_STREAMED = frozenset({"expect", "upgrade"})
#: Request headers that frame a body.
_FRAMED = frozenset({"content-length", "transfer-encoding"})
#: Request headers :func:`quick_backend_request` leaves to the general rules.
_NOT_AS_RECEIVED = REWRITTEN | _http.HOP_BY_HOP | {"x-forwarded-host"}


def forward_tail(client_ip: str, tls: bool) -> bytes:
    """The forwarding header lines the common request of a client connection gets
    (:func:`quick_backend_request`), made once per connection; the Host's value last."""
    proto = "https" if tls else "http"
    return (
        f"X-Forwarded-For: {client_ip}\r\nX-Forwarded-Proto: {proto}\r\nX-Forwarded-Host: ".encode(
            "latin-1"
        )
    )


def quick_backend_request(
    buf: bytes, end: int, head: _http.RequestHead, tail: bytes
) -> bytes | None:
    """What :meth:`BuiltinLoadBalancer.backend_request` makes of the common request (no
    body, an idempotent method, an ``HTTP/1.1`` start line, a Host, nothing the proxy
    takes out or writes itself), made from its bytes as they came (``buf[:end]``, the
    head :func:`_http.take_request` parsed) and ``tail`` (:func:`forward_tail`); None for
    any other request."""
    special = head.special
    hosts = special.get("host")
    # The start line is method SP target SP version, all ASCII: the version starts here.
    version_at = len(head.method) + len(head.target) + 2
    if (
        hosts is None
        or head.method not in _http.IDEMPOTENT
        or not _NOT_AS_RECEIVED.isdisjoint(special)
        or buf[version_at : version_at + 10] != b"HTTP/1.1\r\n"
    ):
        return None
    return b"".join((buf[: end - 2], tail, hosts[0].encode("latin-1"), b"\r\n\r\n"))

"""HTTP/1.1 on streams for the built-in balancer: the request body, the response relayed
to the client, the protocol switch (WebSocket) and the byte splice, and how a failed
attempt is classified (retried or not)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from bisect import bisect_left
from dataclasses import dataclass
from time import monotonic
from typing import NamedTuple

from gitorch.traffic import _http
from gitorch.traffic.builtin.backends import BackendState, PooledStream
from gitorch.traffic.figures import LATENCY_BOUNDS_MS

#: Request headers the proxy drops and writes itself (framing, expectation, forwarding).
REWRITTEN = frozenset({"content-length", "expect", "x-forwarded-proto", "x-forwarded-for"})


class Failure(enum.Enum):
    """Why an attempt produced no response for the client."""

    NO_BACKEND = "no active backend"
    NOT_CONNECTED = "the connection could not be made"
    POOLED_DEAD = "a reused keep-alive connection was closed before any answer"
    SENT_NO_ANSWER = "a fresh connection broke before any answer"
    PARTIAL_ANSWER = "the backend broke in the middle of its answer head"
    ABANDONED = "the backend became unreachable before any answer"


def partial_read(exc: Exception) -> bool:
    if isinstance(exc, _http.PeerClosed):
        return exc.partial
    return True  # a malformed head means bytes came


def count_response(state: BackendState, status: int, started: float) -> float:
    """Count an answer of ``state``'s backend (its latency since ``started``); returns
    the monotonic time it was counted at."""
    now = monotonic()
    state.requests += 1
    took_ms = (now - started) * 1000
    state.latency[bisect_left(LATENCY_BOUNDS_MS, took_ms)] += 1  # figures.bucket_of
    state.latency_sum_ms += took_ms
    if status >= 500:
        state.errors += 1
        state.errors_5xx += 1
    return now


@dataclass
class RequestBody:
    """A request body: small ones are read whole (replayable), large ones streamed."""

    kind: str  # none | length | chunked (as the client framed it)
    length: int
    prefix: bytes = b""
    complete: bool = True
    consumed_partly: bool = False  # part of the rest was read from the client: no replay

    @property
    def replayable(self) -> bool:
        return not self.consumed_partly

    async def read_prefix(self, reader: asyncio.StreamReader) -> None:
        if self.kind == "length":
            if self.length <= _http.REPLAY_LIMIT:
                self.prefix = await _http.read_exactly(reader, self.length)
            else:
                self.complete = False
        elif self.kind == "chunked":
            self.prefix, self.complete = await _http.read_chunked_prefix(reader, _http.REPLAY_LIMIT)

    def framing_headers(self, method: str) -> _http.Headers:
        if self.complete:
            if self.kind == "none" and method in _http.IDEMPOTENT:
                return []
            return [("Content-Length", str(len(self.prefix)))]
        if self.kind == "length":
            return [("Content-Length", str(self.length))]
        return [("Transfer-Encoding", "chunked")]

    async def send_streamed(
        self, head: bytes, client: asyncio.StreamReader, backend: asyncio.StreamWriter
    ) -> None:
        """Send the request head and a body too large to buffer (``complete`` False),
        copying the rest of it from the client; a whole body goes with its head in
        :meth:`BuiltinLoadBalancer._attempt`."""
        if self.consumed_partly:
            raise ConnectionError("request body already partly forwarded")
        self.consumed_partly = True
        backend.write(head)
        if self.kind == "length":
            await backend.drain()
            await _http.copy_length(client, backend, self.length)
        else:
            _http.write_piece(backend, self.prefix, chunked=True)
            await backend.drain()
            await _http.copy_chunked(client, backend, chunked=True)


CONTENT_LENGTH = frozenset({"content-length"})


async def relay_response(
    request: _http.RequestHead,
    response: _http.ResponseHead,
    backend: asyncio.StreamReader,
    client: asyncio.StreamWriter,
    client_keep: bool,
    extra: _http.Headers | None = None,
) -> tuple[bool, bool]:
    """Stream the response to the client: (client keep-alive, backend conn reusable);
    ``extra`` headers (the sticky cookie) are added to the backend's."""
    out = response_out(request, response, client_keep, extra)
    kind, length = out.kind, out.length
    if kind == "length" and length <= _http.COPY_SIZE:
        # Small answers (the common case) go out in one write with their head.
        try:
            client.write(out.head + await backend.readexactly(length))
        except asyncio.IncompleteReadError:
            raise _http.PeerClosed(partial=True) from None
    else:
        client.write(out.head)
        if kind == "length":
            await _http.copy_length(backend, client, length)
        elif kind == "chunked":
            await _http.copy_chunked(backend, client, chunked=out.chunked)
        elif kind == "eof":
            await _http.copy_to_eof(backend, client, chunked=out.chunked)
    if client.transport.get_write_buffer_size():
        await client.drain()  # most writes go straight to the socket: no await then
    return out.client_keep, out.backend_keep


class ResponseOut(NamedTuple):
    """How a backend's response goes on to the client (see :func:`response_out`)."""

    head: bytes  # the head sent to the client
    kind: str  # the backend's body framing: none | length | chunked | eof
    length: int
    chunked: bool  # the body goes out chunked
    client_keep: bool
    backend_keep: bool


def response_out(
    request: _http.RequestHead,
    response: _http.ResponseHead,
    client_keep: bool,
    extra: _http.Headers | None,
) -> ResponseOut:
    """The head for the client and the framings of a backend's response (pure)."""
    special = response.special
    if (
        client_keep
        and not extra
        and request.version >= (1, 1)
        and response.version >= (1, 1)
        and _http.HOP_BY_HOP.isdisjoint(special)
        and request.method != "HEAD"
        and response.status not in (204, 304)
    ):
        # The common answer (one plain Content-Length, nothing hop-by-hop, nothing to
        # add, a keep-alive HTTP/1.1 client): the general case below comes to its head
        # as it came, under the status line; this only gets there in fewer steps.
        lengths = special.get("content-length")
        if lengths is not None and len(lengths) == 1:
            value = lengths[0]
            if value.isdigit() and len(value) <= 18 and (value[0] != "0" or value == "0"):
                line = f"HTTP/1.1 {response.status} {response.reason}".rstrip()
                out = f"{line}\r\n{response.block}\r\n".encode("latin-1")
                return ResponseOut(out, "length", int(value), False, True, True)
    no_body = request.method == "HEAD" or response.status in (204, 304)
    connection = special.get("connection")
    backend_keep = response.version >= (1, 1) and (
        connection is None or "close" not in _http.tokens_of(connection)
    )
    if no_body:
        kind, length = "none", 0
    else:
        try:
            kind, length = response.framing()
        except _http.BadMessage:
            kind, length = "eof", 0  # unreadable framing: relay until the backend closes
        if kind == "none":
            kind = "eof"  # no length: the body ends when the backend closes
    if kind == "eof":
        backend_keep = False
    # The backend's Content-Length line goes on as it came when it is the one length
    # being relayed (the common case: the head is forwarded unchanged); else it is
    # dropped and, for a length-framed body, written anew.
    lengths = special.get("content-length")
    own_length = kind == "length" and lengths is not None and lengths == [str(length)]
    block = response.forward_block(frozenset() if no_body or own_length else CONTENT_LENGTH)
    parts = [f"HTTP/1.1 {response.status} {response.reason}".rstrip(), "\r\n", block]
    if extra:
        parts.extend(f"{name}: {value}\r\n" for name, value in extra)
    chunked_out = False
    if kind == "length":
        if not own_length:
            parts.append(f"Content-Length: {length}\r\n")
    elif kind in ("chunked", "eof"):
        if request.version >= (1, 1):
            chunked_out = True
            parts.append("Transfer-Encoding: chunked\r\n")
        else:
            client_keep = False  # an HTTP/1.0 client learns the end by the close
    if client_keep:
        if request.version < (1, 1):
            parts.append("Connection: keep-alive\r\n")
    else:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    out_head = "".join(parts).encode("latin-1")
    return ResponseOut(out_head, kind, length, chunked_out, client_keep, backend_keep)


def answer_as_received(
    buf: bytes,
    end: int,
    response: _http.ResponseHead,
    request: _http.RequestHead,
    client_keep: bool,
    extra: _http.Headers | None,
) -> int:
    """The length of the answer's body when :func:`response_out` would send its head
    (``buf[:end]``, as :func:`_http.take_response` parsed it) on unchanged, framed by its
    one Content-Length, at most :data:`_http.COPY_SIZE`; else -1. So the common answer
    goes to the client as it came, without being made anew."""
    special = response.special
    lengths = special.get("content-length")
    if (
        lengths is None
        or len(lengths) != 1
        or not client_keep
        or extra
        or request.version < (1, 1)
        or request.method == "HEAD"
        or response.status in (204, 304)
        or not _http.HOP_BY_HOP.isdisjoint(special)
        or buf[:9] != b"HTTP/1.1 "
    ):
        return -1
    value = lengths[0]
    if not value.isdigit() or len(value) > 5 or (value[0] == "0" and value != "0"):
        return -1
    length = int(value)
    # The status line as response_out writes it: a three-digit code (no leading zero),
    # then nothing, or a space and a reason that does not end in white space.
    line_end = end - len(response.block) - 4  # the head: line CRLF block CRLF
    if length > _http.COPY_SIZE or not (
        response.status >= 100
        and (line_end == 12 or (buf[12] == 32 and 33 <= buf[line_end - 1] <= 126))
    ):
        return -1
    return length


async def switch_protocols(
    response: _http.ResponseHead,
    upgrade: str,
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    backend: PooledStream,
    extra: _http.Headers,
) -> None:
    """Relay a backend's 101 answer, then copy bytes both ways until both sides end (a
    WebSocket, or any protocol the client asked to upgrade to)."""
    protocol = response.first("upgrade") or upgrade
    parts = [f"HTTP/1.1 101 {response.reason}".rstrip(), "\r\n", response.forward_block()]
    parts.extend(f"{name}: {value}\r\n" for name, value in extra)
    parts.append(f"Connection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n")
    client_writer.write("".join(parts).encode("latin-1"))
    await client_writer.drain()
    await splice(client_reader, client_writer, backend.reader, backend.writer)


async def answer(
    writer: asyncio.StreamWriter,
    status: int,
    text: str,
    *,
    keep: bool = False,
    head_only: bool = False,
) -> bool:
    """Send a response made by the proxy; returns whether the connection may go on."""
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(_http.simple_response(status, text, close=not keep, head_only=head_only))
        await writer.drain()
        return keep
    return False


async def splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    backend_reader: asyncio.StreamReader,
    backend_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until both directions ended; a half-close is passed on."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(_http.COPY_SIZE):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
        except (ConnectionError, OSError):
            # One side broke: end both directions now.
            for writer in (client_writer, backend_writer):
                writer.transport.abort()

    await asyncio.gather(pump(client_reader, backend_writer), pump(backend_reader, client_writer))


def may_retry(failure: Failure, method: str, body: RequestBody) -> bool:
    """Whether a request whose attempt failed so may go to another backend: only a body
    kept whole, and only when nothing reached the backend or, for an idempotent method,
    nothing reached the client."""
    if not body.replayable:
        return False
    if failure in (Failure.NOT_CONNECTED, Failure.POOLED_DEAD):
        return True  # the request never reached a backend (or almost surely not)
    # Nothing has reached the client yet, so an idempotent request may go elsewhere
    # even when the backend broke halfway through its head (nginx: invalid_header).
    answerless = failure in (
        Failure.SENT_NO_ANSWER,
        Failure.PARTIAL_ANSWER,
        Failure.ABANDONED,
    )
    return answerless and method in _http.IDEMPOTENT

"""A proxy on another host, driven through its engine: the control channel of an ingress.

An ingress (``gitorch proxy`` in a container on a remote host, :mod:`gitorch.apply.ingress`)
listens for control requests on its unix socket, inside the container, as every proxy
does. The daemon reaches it without opening any port: it runs ``python -m
gitorch.traffic.proxy relay`` in the container through the engine's exec API, over the
connection gitorch already holds to that engine (TLS with client certificates, or ssh),
and keeps that exec session open. The relay reads requests on its stdin and writes the
answers on its stdout, in the control socket's framing (a 4-byte length, then JSON), one
at a time. So the channel is exactly as authenticated as the engine itself: whoever may
run containers there may drive its ingress, and nobody else can.

A request is applied only while the daemon still waits for its answer. A host cut off the
network keeps what was written to it in the engine connection's send queue; when the link
comes back, TCP delivers it, seconds or minutes late, to a relay whose daemon gave up on
it long ago: a table from before the cut would lift the ingress's fence and send clients
to replicas replaced meanwhile. So a session starts by asking the relay's clock
(``relay-clock``, answered by the relay itself), and every later request carries the
moment, on that clock, after which the daemon no longer waits (``notAfter``: sent plus
the channel's read timeout); the relay refuses a request that comes later (error kind
``late``) rather than passing it on.

:class:`RemoteProxyPlane` is the :class:`~gitorch.traffic.table.DataPlane` of one such
proxy: a failed request drops the session and the next opens a new one; every failure
names the node.
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from gitorch.traffic.proxy.client import CALL_TIMEOUT, ControlledPlane
from gitorch.traffic.proxy.control import MAX_MESSAGE, ProxyUnavailable, call
from gitorch.traffic.routes import check_table
from gitorch.traffic.table import RoutingTable

#: The error kind a relay answers with when no proxy answers behind it.
UNAVAILABLE = "unavailable"
#: The error kind a relay answers a request with when it came after its ``notAfter``.
LATE = "late"
#: The request a relay answers itself, with its monotonic clock (``{"clock": seconds}``).
CLOCK_OP = "relay-clock"
#: Seconds a channel that broke is not tried again (callers fail at once meanwhile).
PAUSE = 3.0


class ProxyNotServing(ProxyUnavailable):
    """The relay answered, but no proxy answers behind it (yet): an ingress starting."""


class ByteChannel(Protocol):
    """A duplex byte stream to a relay (a Docker exec session: its stdin and stdout)."""

    #: Seconds a read waits for the relay's answer after its first: a request sent this
    #: long ago has been given up on (its ``notAfter``).
    timeout: float

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        ...

    def receive(self, size: int) -> bytes:
        """Exactly ``size`` bytes; :class:`ConnectionError` when the stream ends first."""
        ...

    def close(self) -> None: ...


def _frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack("!I", len(body)) + body


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def serve_relay(control_socket: Path, timeout: float = CALL_TIMEOUT) -> int:
    """The relay's loop (``python -m gitorch.traffic.proxy relay``): each request read on
    stdin goes to the proxy at ``control_socket``, unless it came after its ``notAfter``
    (see the module docstring); its answer (or why there was none) is written to stdout.
    Returns 0 at the end of stdin."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exactly(stdin, 4)
        if len(header) < 4:
            return 0
        (size,) = struct.unpack("!I", header)
        if size > MAX_MESSAGE:
            return 2
        try:
            request = json.loads(_read_exactly(stdin, size))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            answer: dict[str, Any] = {"error": {"kind": "other", "message": f"bad request: {exc}"}}
        else:
            answer = _relayed(control_socket, request, timeout)
        stdout.write(_frame(answer))
        stdout.flush()


def _relayed(control_socket: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    if request.get("op") == CLOCK_OP:
        return {"ok": True, "clock": time.monotonic()}
    not_after = request.pop("notAfter", None)
    late = time.monotonic() - not_after if isinstance(not_after, int | float) else 0.0
    if late > 0:
        return {
            "error": {
                "kind": LATE,
                "message": f"refused {request.get('op')!r}: it came {late:.1f} s after "
                "the daemon stopped waiting for it",
            }
        }
    try:
        return call(control_socket, request, timeout)
    except ProxyUnavailable as exc:
        return {"error": {"kind": UNAVAILABLE, "message": exc.message}}


class _Session:
    """One relay session: its channel, and the relay's clock read when it opened (minus
    this process's), or None when the relay does not tell it (then nothing is refused)."""

    def __init__(self, channel: ByteChannel) -> None:
        self.channel = channel
        self.clock_offset: float | None = None

    def exchange(self, request: dict[str, Any]) -> Any:
        self.channel.send(_frame(request))
        (size,) = struct.unpack("!I", self.channel.receive(4))
        if size > MAX_MESSAGE:
            raise ConnectionError(f"an answer of {size} bytes")
        return json.loads(self.channel.receive(size))

    def read_clock(self) -> None:
        answer = self.exchange({"op": CLOCK_OP})
        # Read as the answer arrives: the relay read its clock just before answering (its
        # start, which may take seconds, came before), so the offset errs by the answer's
        # way back only, and a request's notAfter comes that much early, never late.
        now = time.monotonic()
        clock = answer.get("clock") if isinstance(answer, dict) else None
        if isinstance(clock, int | float):
            self.clock_offset = clock - now


class RemoteProxyPlane(ControlledPlane):
    """The proxy of a node's ingress, through a relay (see the module docstring).

    ``open_channel`` starts a relay and returns its channel; it is called again after any
    failure. A request that reaches the relay more than the channel's ``timeout`` after
    it was sent is refused there. Thread-safe: one request at a time on the session.
    """

    kind = "ingress"

    def __init__(
        self,
        node: str,
        open_channel: Callable[[], ByteChannel],
        *,
        pause: float = PAUSE,
    ) -> None:
        self.node = node
        self._open_channel = open_channel
        self._session: _Session | None = None
        self._lock = threading.Lock()
        self._pause = pause
        self._down: tuple[float, str] | None = None  # (until when, why): fail fast

    def _prepare(self, table: RoutingTable) -> RoutingTable:
        check_table(table)
        return table

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._down is not None and time.monotonic() < self._down[0]:
                raise ProxyUnavailable(self._down[1])  # not another wait on a silent host
            try:
                if self._session is None:
                    self._session = _Session(self._open_channel())
                    self._session.read_clock()
                session = self._session
                if session.clock_offset is not None:
                    waits = session.channel.timeout
                    not_after = time.monotonic() + session.clock_offset + waits
                    request = {**request, "notAfter": not_after}
                answer = session.exchange(request)
                error = answer.get("error") if isinstance(answer, dict) else None
                if isinstance(error, dict) and error.get("kind") == LATE:
                    raise TimeoutError(error.get("message"))  # a channel this slow is broken
            except Exception as exc:  # the channel or the engine's client broke
                self._drop()
                # A timeout says nothing by itself ("timed out", or not even that).
                why = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):
                    why = f"no answer in time ({why})"
                message = (
                    f"node {self.node}: the ingress did not answer {request.get('op')!r}: {why}"
                )
                self._down = (time.monotonic() + self._pause, message)
                raise ProxyUnavailable(message) from exc
            self._down = None
        if not isinstance(answer, dict):
            raise ProxyUnavailable(f"node {self.node}: the ingress answered {answer!r}")
        error = answer.get("error")
        if isinstance(error, dict) and error.get("kind") == UNAVAILABLE:
            raise ProxyNotServing(f"node {self.node}: ingress: {error.get('message')}")
        return answer

    def _drop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):  # a broken session: nothing to report
                self._session.channel.close()
            self._session = None

    def close(self) -> None:
        """End the relay session; the ingress keeps serving its last table."""
        with self._lock:
            self._drop()

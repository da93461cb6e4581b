"""HTTP/1.1 message heads and bodies on asyncio streams, for the built-in proxy.

Only what a reverse proxy needs: read and check a request or response head, decide how
its body is framed, and copy a body from one stream to another without holding it whole.
Parsing is strict where leniency lets a request be read two ways (request smuggling):
both Content-Length and Transfer-Encoding, several differing lengths, obsolete folding.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

#: Longest accepted head line and number of header lines (either side).
MAX_LINE = 16 * 1024
MAX_HEADERS = 128
#: Bodies up to this size are read whole before forwarding, so a failed attempt can be
#: replayed on another backend; larger ones are streamed.
REPLAY_LIMIT = 64 * 1024
COPY_SIZE = 64 * 1024

Headers = list[tuple[str, str]]

#: Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")


class BadMessage(Exception):
    """A message head or body that cannot be read safely (the client gets a 400)."""


class PeerClosed(Exception):
    """The peer closed the connection; ``partial`` tells whether some bytes had come."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed by peer")
        self.partial = partial


@dataclass
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: Headers


@dataclass
class ResponseHead:
    version: tuple[int, int]
    status: int
    reason: str
    headers: Headers


def get(headers: Headers, name: str) -> str | None:
    """The value of the first header called ``name`` (case-insensitive), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def get_all(headers: Headers, name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def tokens(headers: Headers, name: str) -> set[str]:
    """Comma-separated tokens of every ``name`` header, lower-cased."""
    found: set[str] = set()
    for value in get_all(headers, name):
        found.update(part.strip().lower() for part in value.split(",") if part.strip())
    return found


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without hop-by-hop ones (including those named in Connection)."""
    named = tokens(headers, "connection")
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


async def _readline(reader: asyncio.StreamReader, first: bool) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise PeerClosed(partial=bool(exc.partial) or not first) from None
    except asyncio.LimitOverrunError:
        raise BadMessage("head line too long") from None
    if len(line) > MAX_LINE:
        raise BadMessage("head line too long")
    return line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]


async def _read_headers(reader: asyncio.StreamReader) -> Headers:
    headers: Headers = []
    while True:
        line = await _readline(reader, first=False)
        if not line:
            return headers
        if len(headers) >= MAX_HEADERS:
            raise BadMessage("too many header lines")
        if line[:1] in (b" ", b"\t"):
            raise BadMessage("obsolete header line folding")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadMessage(f"malformed header line {line[:60]!r}")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))


def _version(raw: bytes) -> tuple[int, int]:
    match = _VERSION.match(raw)
    if not match:
        raise BadMessage(f"bad HTTP version {raw[:20]!r}")
    return int(match.group(1)), int(match.group(2))


async def read_request_head(reader: asyncio.StreamReader) -> RequestHead:
    """Read one request head. :class:`PeerClosed` (partial=False) on a clean close."""
    line = await _readline(reader, first=True)
    # RFC 9112 2.2: a server should ignore at least one empty line before a request.
    skipped = 0
    while not line and skipped < 4:
        skipped += 1
        line = await _readline(reader, first=True)
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise BadMessage(f"malformed request line {line[:60]!r}")
    version = _version(parts[2])
    if version[0] != 1:
        raise BadMessage("only HTTP/1.x is served")
    try:
        target = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise BadMessage("request target is not ASCII") from None
    headers = await _read_headers(reader)
    return RequestHead(parts[0].decode("ascii"), target, version, headers)


async def read_response_head(reader: asyncio.StreamReader) -> ResponseHead:
    """Read one response head; :class:`PeerClosed` tells whether any byte had come."""
    line = await _readline(reader, first=True)
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
        raise BadMessage(f"malformed status line {line[:60]!r}")
    version = _version(parts[0])
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    headers = await _read_headers(reader)
    return ResponseHead(version, int(parts[1]), reason, headers)


def body_framing(headers: Headers) -> tuple[str, int]:
    """How a body is framed: ("chunked", 0), ("length", n) or ("none", 0).

    Raises :class:`BadMessage` on framings that two parsers could read differently.
    """
    te = get_all(headers, "transfer-encoding")
    cl = get_all(headers, "content-length")
    if te:
        if cl:
            raise BadMessage("both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
        if not codings or codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise BadMessage("unsupported Transfer-Encoding")
        if len(codings) > 1:
            # gzip etc. under chunked: the proxy re-frames, it cannot keep those codings.
            raise BadMessage("only plain chunked Transfer-Encoding is supported")
        return "chunked", 0
    if cl:
        values = {v.strip() for c in cl for v in c.split(",")}
        if len(values) != 1:
            raise BadMessage("conflicting Content-Length values")
        (value,) = values
        if not value.isdigit() or len(value) > 18:
            raise BadMessage(f"bad Content-Length {value[:20]!r}")
        return "length", int(value)
    return "none", 0


async def read_chunk_size(reader: asyncio.StreamReader) -> int:
    """Read one chunk-size line (extensions ignored)."""
    line = await _readline(reader, first=False)
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in size):
        raise BadMessage("bad chunk size")
    return int(size, 16)


async def read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise PeerClosed(partial=True) from None


async def end_chunk(reader: asyncio.StreamReader) -> None:
    """Consume the CRLF after a chunk's data."""
    if await _readline(reader, first=False):
        raise BadMessage("chunk data longer than its size")


async def skip_trailers(reader: asyncio.StreamReader) -> None:
    """Consume the trailer section after the last chunk (trailers are dropped)."""
    await _read_headers(reader)


async def read_chunked_prefix(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read chunks while they fit in ``limit`` bytes: (data, whole body read?).

    When the body is larger, reading stops after the chunk that crossed the limit and the
    rest is left on the stream (to be copied with :func:`copy_chunked`).
    """
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        size = await read_chunk_size(reader)
        if size == 0:
            await skip_trailers(reader)
            return b"".join(parts), True
        parts.append(await read_exactly(reader, size))
        await end_chunk(reader)
        total += size
    return b"".join(parts), False


async def copy_length(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int, chunked: bool = False
) -> None:
    """Copy exactly ``size`` bytes; as chunked frames when ``chunked``."""
    left = size
    while left > 0:
        data = await reader.read(min(COPY_SIZE, left))
        if not data:
            raise PeerClosed(partial=True)
        left -= len(data)
        write_piece(writer, data, chunked)
        await writer.drain()


async def copy_chunked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunked: bool = True
) -> None:
    """Copy the rest of a chunked body; re-framed as chunked when ``chunked``, raw bytes
    otherwise. Writes the final chunk itself when ``chunked``."""
    while True:
        size = await read_chunk_size(reader)
        if size == 0:
            await skip_trailers(reader)
            break
        await copy_length(reader, writer, size, chunked)
        await end_chunk(reader)
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def copy_to_eof(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunked: bool
) -> None:
    """Copy until the peer closes (a response with no length)."""
    while True:
        data = await reader.read(COPY_SIZE)
        if not data:
            break
        write_piece(writer, data, chunked)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def write_piece(writer: asyncio.StreamWriter, data: bytes, chunked: bool) -> None:
    if not data:
        return
    if chunked:
        writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
    else:
        writer.write(data)


def encode_head(first_line: str, headers: Headers) -> bytes:
    lines = [first_line, *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


_REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def simple_response(status: int, text: str, *, close: bool, head_only: bool = False) -> bytes:
    """A small plain-text answer made by the proxy itself."""
    body = (text + "\n").encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close" if close else "keep-alive"),
    ]
    head = encode_head(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", headers)
    return head if head_only else head + body

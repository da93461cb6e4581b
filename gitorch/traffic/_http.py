"""HTTP/1.1 message heads and bodies on asyncio streams, for the built-in proxy.

Only what a reverse proxy needs: read and check a request or response head, decide how
its body is framed, and copy a body from one stream to another without holding it whole.
Heads are parsed by llhttp (Node's parser, through httptools): a well-kept, fuzzed parser
on the proxy's first security surface, as fast as the regular expressions it replaced
once a head's reading is counted (bench/README.md). It is strict where leniency lets a request be read two ways
(request smuggling): both Content-Length and Transfer-Encoding, several lengths, obsolete
folding, a bare CR or LF in a CRLF head, invalid token or value characters; the proxy
adds its own framing rules on top (:func:`body_framing`). Chunked bodies and trailers are
read here (trailers are checked, then dropped).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httptools

#: Longest accepted head line, whole head and number of header lines (either side).
MAX_LINE = 16 * 1024
MAX_HEAD = 64 * 1024
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

#: Matched with fullmatch: "$" would also accept a name ending in a newline.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class BadMessage(Exception):
    """A message head or body that cannot be read safely (the client gets a 400)."""


class PeerClosed(Exception):
    """The peer closed the connection; ``partial`` tells whether some bytes had come."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed by peer")
        self.partial = partial


#: Headers the proxy itself reads or rewrites. Parsing indexes them by lower-case name
#: (``Head.special``) so the hot path looks them up once, not by scanning every header.
SPECIAL = HOP_BY_HOP | frozenset(
    {
        "content-length",
        "expect",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "cookie",
    }
)

_TOKEN_CHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A whole header section (latin-1 text, each line ending in CRLF), checked in one C call.
_BLOCK = re.compile(rf"(?:{_TOKEN_CHARS}:[^\r\n]*\r\n)*")


class Head:
    """The header section of one message.

    ``block`` is the section as received (latin-1 text, every line ending in CRLF, the
    empty last line left out), so a message the proxy need not change is forwarded as
    is; ``special`` indexes the :data:`SPECIAL` headers by lower-case name. The full
    list of pairs (:attr:`headers`) is built only when something asks for it.
    """

    __slots__ = ("block", "special", "_headers")

    def __init__(self, block: str, special: dict[str, list[str]]) -> None:
        self.block = block
        self.special = special
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        """Every header as (name, value), in order."""
        if self._headers is None:
            pairs = (line.partition(":") for line in self.block.split("\r\n")[:-1])
            self._headers = [(name, value.strip(" \t")) for name, _, value in pairs]
        return self._headers

    def first(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower-case)."""
        if name in SPECIAL:
            return self.special.get(name, [])
        return get_all(self.headers, name)

    def tokens(self, name: str) -> set[str]:
        """Comma-separated tokens of every ``name`` header (lower-case), lower-cased."""
        return tokens_of(self.all(name))

    def framing(self) -> tuple[str, int]:
        """:func:`body_framing` of these headers."""
        special = self.special
        return _framing(special.get("transfer-encoding", []), special.get("content-length", []))

    def forward_block(self, drop: frozenset[str] = frozenset()) -> str:
        """The end-to-end header lines (:func:`end_to_end`) less those named in ``drop``
        (names from :data:`SPECIAL`), as CRLF-ended text ready to send."""
        special = self.special
        if drop.isdisjoint(special) and HOP_BY_HOP.isdisjoint(special):
            return self.block  # the common case: nothing to take out
        named = self.tokens("connection")
        kept = [
            f"{name}: {value}\r\n"
            for name, value in self.headers
            if (low := name.lower()) not in HOP_BY_HOP and low not in named and low not in drop
        ]
        return "".join(kept)


class RequestHead(Head):
    """A request's start line and headers."""

    __slots__ = ("method", "target", "version")

    def __init__(
        self,
        method: str,
        target: str,
        version: tuple[int, int],
        block: str = "",
        special: dict[str, list[str]] | None = None,
    ) -> None:
        self.block = block
        self.special = {} if special is None else special
        self._headers = None
        self.method = method
        self.target = target
        self.version = version


class ResponseHead(Head):
    """A response's status line and headers."""

    __slots__ = ("version", "status", "reason")

    def __init__(
        self,
        version: tuple[int, int],
        status: int,
        reason: str,
        block: str = "",
        special: dict[str, list[str]] | None = None,
    ) -> None:
        self.block = block
        self.special = {} if special is None else special
        self._headers = None
        self.version = version
        self.status = status
        self.reason = reason


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
    return tokens_of(get_all(headers, name))


def tokens_of(values: list[str]) -> set[str]:
    """Comma-separated tokens of ``values`` (a header's values), lower-cased."""
    found: set[str] = set()
    for value in values:
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


async def _read_line_block(reader: asyncio.StreamReader) -> bytes:
    """Header lines one at a time, up to the empty line, as CRLF-ended lines (not yet
    checked). For bare-LF senders and chunk trailers."""
    lines: list[bytes] = []
    while True:
        line = await _readline(reader, first=False)
        if not line:
            return b"".join(lines)
        if len(lines) >= MAX_HEADERS:
            raise BadMessage("too many header lines")
        if b"\r" in line:
            raise BadMessage(f"malformed header line {line[:60]!r}")
        lines.append(line + b"\r\n")


async def _read_raw_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """A message head: (start line, header section as CRLF-ended lines).

    Reading line by line cost the proxy a fifth of its time, so the header section of a
    CRLF sender is read in one go: two bytes tell an empty section, else it runs to the
    first CRLF CRLF. A sender whose start line ends in a bare LF (RFC 9112 2.2 lets a
    recipient accept it) is read line by line, and its head is parsed as the CRLF head it
    means. An empty start line comes back alone (the caller skips it). A bare CR inside a
    line is refused, and so is (by the parser) a bare LF inside a CRLF sender's head: no
    head can be read two ways.
    """
    try:
        first = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise PeerClosed(partial=bool(exc.partial)) from None
    except asyncio.LimitOverrunError:
        raise BadMessage("head line too long") from None
    crlf = first.endswith(b"\r\n")
    line = first[:-2] if crlf else first[:-1]
    if len(line) > MAX_LINE:
        raise BadMessage("head line too long")
    if b"\r" in line:
        raise BadMessage("bare CR in the start line")
    if not line:
        return line, b""
    if not crlf:
        return line, await _read_line_block(reader)
    try:
        start = await reader.readexactly(2)
        if start == b"\r\n":
            return line, b""
        rest = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise PeerClosed(partial=True) from None
    except asyncio.LimitOverrunError:
        raise BadMessage("head too large") from None
    return line, (start + rest)[:-2]


class _NoCallbacks:
    """What llhttp calls back as it parses: nothing. A call per header (or for the
    target) cost more than the parse itself; once llhttp accepted a head, its start line
    has its parts between single spaces and each header line is ``name:value``, split
    here. Every callback httptools looks for is here, as None: a callback it does not
    find costs it a raised and caught AttributeError, nine times per parser made."""

    __slots__ = ()
    on_message_begin = on_url = on_status = on_header = on_headers_complete = None
    on_body = on_message_complete = on_chunk_header = on_chunk_complete = None


_NO_CALLBACKS = _NoCallbacks()


def _parse_head(
    parser_type: type[httptools.HttpRequestParser] | type[httptools.HttpResponseParser],
    buf: bytes,
    line_end: int,
    end: int,
) -> tuple[Any, str, dict[str, list[str]]]:
    """Parse the head ``buf[:end]`` (its start line ends at ``line_end``: ``line`` CRLF
    ``block`` CRLF) with llhttp (strict: what it refuses is a :class:`BadMessage`), and
    index the :data:`SPECIAL` headers; (the parser, the header section as text, the
    index)."""
    block = buf[line_end + 2 : end - 2]
    size = len(block)
    if size > MAX_LINE and any(len(row) > MAX_LINE for row in block.split(b"\r\n")):
        raise BadMessage("head line too long")
    parser = parser_type(_NO_CALLBACKS)
    try:
        parser.feed_data(buf if len(buf) == end else buf[:end])
    except httptools.HttpParserUpgrade:
        pass  # Upgrade or CONNECT: the head is whole and valid; what follows is not HTTP
    except httptools.HttpParserError as exc:
        raise BadMessage(f"{exc} in {buf[: min(line_end, 60)]!r}") from None
    if size > MAX_HEADERS and block.count(b"\n") > MAX_HEADERS:  # (a line per byte at most)
        raise BadMessage("too many header lines")
    # The SPECIAL headers indexed (inline: this runs for every head, both ways).
    special: dict[str, list[str]] = {}
    if not size:
        return parser, "", special
    text = block.decode("latin-1")
    for row in text[:-2].split("\r\n"):  # (the block ends with a line end)
        name, _, value = row.partition(":")
        low = name.lower()
        if low in SPECIAL:
            value = value.strip(" \t")
            known = special.get(low)
            if known is None:
                special[low] = [value]
            else:
                known.append(value)
    return parser, text, special


def _parse_block(block: str) -> Head:
    """Check a trailer section (CRLF-ended lines; trailers are dropped, only checked)."""
    if not _BLOCK.fullmatch(block) or len(block) > MAX_LINE:
        _explain(block)  # raises when something is wrong; a long but valid one passes
    if block.count("\n") > MAX_HEADERS:
        raise BadMessage("too many header lines")
    return Head(block, {})


def _explain(block: str) -> None:
    """Raise :class:`BadMessage` naming the first bad line of ``block``, if any."""
    for line in block.split("\r\n")[:-1]:
        raw = line.encode("latin-1")
        if len(raw) > MAX_LINE:
            raise BadMessage("head line too long")
        name, sep, value = raw.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            if raw[:1] in (b" ", b"\t"):
                raise BadMessage("obsolete header line folding")
            raise BadMessage(f"malformed header line {raw[:60]!r}")
        if b"\r" in value or b"\n" in value:
            raise BadMessage(f"malformed header line {raw[:60]!r}")


_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}


def _version(parser: Any) -> tuple[int, int]:
    text = parser.get_http_version()
    known = _VERSIONS.get(text)
    if known is not None:
        return known
    major, _, minor = text.partition(".")
    if major != "1" or not minor.isdigit():
        raise BadMessage(f"only HTTP/1.x is served, not {text[:10]!r}")
    return 1, int(minor)


class NotSimple(Exception):
    """A head :func:`split_head` leaves to the stream readers (:func:`read_request_head`,
    :func:`read_response_head`): bare-LF line ends, empty lines before it, a bare CR in
    its start line, or a very long head. They read it, or refuse it, as they always do."""


#: Longest head :func:`split_head` takes from a buffer (longer ones go to the readers).
SPLIT_LIMIT = MAX_HEAD // 2


def head_bounds(buf: bytes) -> tuple[int, int] | None:
    """Where the head at the start of ``buf`` ends, as :func:`_read_raw_head` would read
    it from a stream, for a sender of CRLF heads: (offset of the start line's CR, offset
    just past the empty line), or None while more bytes are needed.

    Raises :class:`NotSimple` on anything else, so the byte-for-byte same rules (and
    errors) of the stream readers apply to it: this only saves the awaits."""
    eol = buf.find(b"\n", 0, SPLIT_LIMIT)
    if eol < 0:
        if len(buf) >= SPLIT_LIMIT:
            raise NotSimple
        return None
    # An empty line, a line too long, a bare LF at its end or a bare CR in it: the line's
    # first CR must be the one just before its LF.
    if eol < 2 or eol - 1 > MAX_LINE or buf[eol - 1] != 13 or 13 in buf[: eol - 1]:  # CR: 13
        raise NotSimple
    # The empty line: right after the start line (found at its CR), or else looked for
    # from three bytes past its LF on, as the stream reader does (one that starts two
    # bytes past it, after a header line of one byte, is not the one the reader finds).
    end = buf.find(b"\r\n\r\n", eol - 1, SPLIT_LIMIT)
    if end == eol + 2:
        end = buf.find(b"\r\n\r\n", eol + 3, SPLIT_LIMIT)
    if end < 0:
        if len(buf) >= SPLIT_LIMIT:
            raise NotSimple
        return None
    return eol - 1, end + 4


def split_head(buf: bytes) -> tuple[bytes, bytes, int] | None:
    """The head at the start of ``buf`` (:func:`head_bounds`) as (start line, header
    section as CRLF-ended lines, offset just past the head), or None while more bytes
    are needed; :class:`NotSimple` for what the stream readers must read."""
    bounds = head_bounds(buf)
    if bounds is None:
        return None
    line_end, end = bounds
    return buf[:line_end], buf[line_end + 2 : end - 2], end


def take_request(buf: bytes) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``buf``, parsed (:func:`request_head_of` of
    :func:`split_head`, in one step for the fast path), and the offset just past it; None
    while more bytes are needed. :class:`NotSimple` for what the stream reader must read,
    :class:`BadMessage` for what it would refuse."""
    bounds = head_bounds(buf)
    if bounds is None:
        return None
    end = bounds[1]
    return _request(buf, bounds[0], end), end


def take_response(buf: bytes) -> tuple[ResponseHead, int] | None:
    """:func:`take_request` for a response head (:func:`response_head_of`)."""
    bounds = head_bounds(buf)
    if bounds is None:
        return None
    end = bounds[1]
    return _response(buf, bounds[0], end), end


async def read_request_head(reader: asyncio.StreamReader) -> RequestHead:
    """Read one request head. :class:`PeerClosed` (partial=False) on a clean close."""
    line, block = await _read_raw_head(reader)
    # RFC 9112 2.2: a server should ignore at least one empty line before a request.
    for _ in range(4):
        if line:
            break
        line, block = await _read_raw_head(reader)
    return request_head_of(line, block)


def request_head_of(line: bytes, block: bytes) -> RequestHead:
    """Parse a request head (start line, header section as CRLF-ended lines)."""
    whole = line + b"\r\n" + block + b"\r\n"
    return _request(whole, len(line), len(whole))


#: The versions of almost every message, by their token in the start line (llhttp
#: accepted the line: the token is the version it read), without asking the parser.
_VERSION_TOKENS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}


def _request(buf: bytes, line_end: int, end: int) -> RequestHead:
    """:func:`request_head_of` of the head ``buf[:end]`` (as received), whose start line
    ends at ``line_end``."""
    line = buf[:line_end]
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadMessage(f"malformed request line {line[:60]!r}")
    parser, text, special = _parse_head(httptools.HttpRequestParser, buf, line_end, end)
    method, target, token = parts
    if not target.isascii():
        raise BadMessage("request target is not ASCII")
    hosts = special.get("host")
    if hosts is not None and len(hosts) > 1:
        # RFC 9112 3.2: a 400, never a pick; a backend reading another one than the
        # proxy's routing and X-Forwarded-Host is how host confusion attacks begin.
        raise BadMessage("more than one Host header")
    version = _VERSION_TOKENS.get(token) or _version(parser)
    # llhttp accepted the line: its first part is the method llhttp read, letter for letter.
    return RequestHead(method.decode("ascii"), target.decode(), version, text, special)


async def read_response_head(reader: asyncio.StreamReader) -> ResponseHead:
    """Read one response head; :class:`PeerClosed` tells whether any byte had come."""
    line, block = await _read_raw_head(reader)
    return response_head_of(line, block)


def response_head_of(line: bytes, block: bytes) -> ResponseHead:
    """Parse a response head (status line, header section as CRLF-ended lines)."""
    whole = line + b"\r\n" + block + b"\r\n"
    return _response(whole, len(line), len(whole))


def _response(buf: bytes, line_end: int, end: int) -> ResponseHead:
    """:func:`response_head_of` of the head ``buf[:end]``, as :func:`_request`."""
    parser, text, special = _parse_head(httptools.HttpResponseParser, buf, line_end, end)
    parts = buf[:line_end].split(b" ", 2)
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    version = _VERSION_TOKENS.get(parts[0]) or _version(parser)
    return ResponseHead(version, parser.get_status_code(), reason, text, special)


def body_framing(headers: Headers) -> tuple[str, int]:
    """How a body is framed: ("chunked", 0), ("length", n) or ("none", 0).

    Raises :class:`BadMessage` on framings that two parsers could read differently.
    """
    return _framing(get_all(headers, "transfer-encoding"), get_all(headers, "content-length"))


def _framing(te: list[str], cl: list[str]) -> tuple[str, int]:
    if not te and len(cl) == 1:
        value = cl[0]
        if value.isdigit() and len(value) <= 18:
            return "length", int(value)  # the common case, read as below in one step
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
    """Consume (and check) the trailer section after the last chunk; trailers are dropped."""
    _parse_block((await _read_line_block(reader)).decode("latin-1"))


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

"""HTTP/1.1 head parsing: llhttp (httptools, what the proxy uses) vs the hand-written
parser it replaced vs h11, on the proxy's own read path (not a test).

Each reads a typical request head (7 headers) and a typical response head from an
asyncio StreamReader, as the proxy does for every request, and parses it into what the
proxy needs. The hand-written parser is loaded from the last commit that had it
(``git show``), so the comparison needs no copy of it in the tree.

Run: ``python3 bench/bench_http_parse.py [--rounds 5] [--count 50000]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import h11  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.traffic import _http  # noqa: E402

#: The last commit whose traffic/_http.py parsed heads with regular expressions.
HAND_WRITTEN = "db4b3c9"

REQUEST = (
    b"GET /api/items?page=2 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk/4.2\r\n"
    b"Accept: */*\r\nAccept-Encoding: gzip\r\nCookie: session=abc; gitorch_v_web=1\r\n"
    b"X-Request-Id: 8f14e45f\r\nConnection: keep-alive\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Date: Fri, 04 Dec 2026 17:00:00 GMT\r\nServer: api\r\n\r\n"
)


def hand_written() -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{HAND_WRITTEN}:gitorch/traffic/_http.py"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "hand_written_http.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("hand_written_http", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def per_head(
    read: Callable[[asyncio.StreamReader], Awaitable[object]], data: bytes, count: int
) -> float:
    """Microseconds per head read and parsed."""
    started = time.perf_counter()
    for _ in range(count):
        reader = asyncio.StreamReader(limit=_http.MAX_HEAD)
        reader.feed_data(data)
        await read(reader)
    return (time.perf_counter() - started) / count * 1e6


async def h11_request(reader: asyncio.StreamReader) -> object:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(await reader.readuntil(b"\r\n\r\n"))
    return conn.next_event()


async def h11_response(reader: asyncio.StreamReader) -> object:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.receive_data(await reader.readuntil(b"\r\n\r\n"))
    return conn.next_event()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=50_000)
    args = parser.parse_args()
    old = hand_written()
    variants = {
        "llhttp (httptools)": (_http.read_request_head, _http.read_response_head),
        "hand-written": (old.read_request_head, old.read_response_head),
        "h11": (h11_request, h11_response),
    }
    loop = asyncio.new_event_loop()
    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in variants}
    for _ in range(args.rounds):
        for name, (request, response) in variants.items():
            count = args.count // 5 if name == "h11" else args.count  # h11 is slow
            results[name][0].append(loop.run_until_complete(per_head(request, REQUEST, count)))
            results[name][1].append(loop.run_until_complete(per_head(response, RESPONSE, count)))
    print(f"median of {args.rounds} rounds, microseconds per head (read + parse):")
    base = statistics.median(results["hand-written"][0]) + statistics.median(
        results["hand-written"][1]
    )
    for name, (requests, responses) in results.items():
        req, resp = statistics.median(requests), statistics.median(responses)
        print(
            f"  {name:>20}: request {req:6.2f}  response {resp:6.2f}  "
            f"(request + response: {(req + resp) / base:.2f} of the hand-written)"
        )
        if name != "hand-written":
            emit(
                f"{name}: read + parse a request and a response head",
                f"{req + resp:.2f} us",
                against=f"the hand-written parser ({base:.2f} us)",
                ratio=f"{(req + resp) / base:.2f}x",
            )


if __name__ == "__main__":
    main()

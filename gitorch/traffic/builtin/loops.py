"""The event loops the built-in balancer runs on (asyncio or uvloop)."""

from __future__ import annotations

import asyncio

from gitorch.errors import ConfigError

#: Event loops the balancer can run on.
EVENT_LOOPS = ("asyncio", "uvloop")


def default_event_loop() -> str:
    """uvloop when it is installed (15% more requests per second for the proxy, and a
    lower p99: bench/README.md), else the standard library's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop: the standard library's, or uvloop's (libuv, measured in
    bench/README.md); :class:`ConfigError` when uvloop is asked for and not installed."""
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigError(
                "the uvloop event loop is not installed (pip install uvloop)"
            ) from exc
        return uvloop.new_event_loop()
    raise ConfigError(f"event loop {kind!r}: expected one of {', '.join(EVENT_LOOPS)}")

"""``gitorch proxy run``'s options and start, importable without the rest of the CLI.

The proxy process is started as ``python -m gitorch.traffic.proxy`` by the daemon: it then
loads only the data plane (about 26 MiB resident instead of the whole CLI's 46), which is
what each host runs for good. ``gitorch proxy run`` takes the same options.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from gitorch.logs import setup_logging
from gitorch.process_limits import raise_open_files_limit
from gitorch.traffic.builtin.loops import EVENT_LOOPS, default_event_loop
from gitorch.traffic.proxy.control import ProxyPaths
from gitorch.traffic.proxy.keeper import Held, KeeperLink, keep
from gitorch.traffic.proxy.server import ProxyServer, detach


def proxy_workers(text: str) -> int:
    """``N`` (1..64) or ``auto``: one per core, at most 4."""
    if text == "auto":
        return max(1, min(os.cpu_count() or 1, 4))
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', not {text!r}") from None
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"expected 1..64 or 'auto', not {count}")
    return count


def add_serving_options(
    parser: argparse.ArgumentParser, defaults_from_running: bool = False
) -> None:
    """``--host --workers --event-loop --drain-timeout --log-level``."""
    same = " (default: the running proxy's)" if defaults_from_running else ""
    parser.add_argument(
        "--host",
        default=None,
        help=f"address the proxy listens on{same or ' (default 127.0.0.1)'}",
    )
    parser.add_argument(
        "--workers",
        type=proxy_workers,
        default=None,
        metavar="N|auto",
        help="proxying processes, each sharing every port (SO_REUSEPORT); auto: one per "
        f"core, at most 4{same or ' (default auto)'}",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=None,
        help=f"the workers' event loop{same or ' (default uvloop when installed)'}",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds a stopping or replaced proxy lets open connections finish (default 30)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        default=None,
        metavar="DIR",
        help="state directory (default: $GITORCH_STATE, else ./.gitorch)",
    )
    add_serving_options(parser)
    parser.add_argument(
        "--detach",
        action="store_true",
        help="run in the background (double fork, log in <state>/proxy/proxy.log); "
        "returns once the proxy serves",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until stopped: a socket keeper and, forked from it, the coordinator (see
    :mod:`~gitorch.traffic.proxy.keeper` and :class:`~gitorch.traffic.proxy.server.
    ProxyServer`)."""
    state = Path(args.state or os.environ.get("GITORCH_STATE") or ".gitorch").resolve()
    paths = ProxyPaths.of(state)
    paths.make()
    paths.stopped.unlink(missing_ok=True)
    ready = detach(paths.log) if args.detach else None
    setup_logging(args.log_level, "text")
    raise_open_files_limit()  # two descriptors per proxied connection

    def serve(link: KeeperLink, inherited: Held) -> int:
        server = ProxyServer(
            state,
            host=args.host or "127.0.0.1",
            workers=args.workers or proxy_workers("auto"),
            drain_timeout=args.drain_timeout,
            event_loop=args.event_loop or default_event_loop(),
            keeper=link,
            inherited=inherited,
        )
        return server.run()

    return keep(serve, paths.start_lock, ready)


def relay(args: argparse.Namespace) -> int:
    """Carry control requests from stdin to the proxy of ``--state`` and its answers to
    stdout (see :mod:`gitorch.traffic.proxy.remote`); ends at the end of stdin."""
    from gitorch.traffic.proxy.remote import serve_relay

    state = Path(args.state or os.environ.get("GITORCH_STATE") or ".gitorch").resolve()
    return serve_relay(ProxyPaths.of(state).socket)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gitorch.traffic.proxy",
        description="gitorch proxy run, without the rest of the CLI (see gitorch proxy --help); "
        "relay: the control channel of a proxy on another host, over stdin and stdout",
    )
    parser.add_argument("action", choices=("run", "relay"))
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.action == "relay":
        return relay(args)
    return run(args)

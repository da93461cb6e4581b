"""The ``gitorch`` command: argument parsing, dispatch, and error reporting.

A user mistake ends as one clear line on stderr (plus detail lines) and exit code 1,
never a traceback; ``GITORCH_DEBUG=1`` shows the traceback for bug reports.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.markup import escape

from gitorch import __version__
from gitorch.commands import (
    apply,
    daemon,
    drain,
    history,
    nodes,
    plan,
    promote,
    proxy,
    status,
    validate,
)
from gitorch.commands.common import stderr
from gitorch.errors import GitorchError


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; gitorch reserves 2 for "plan has changes"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gitorch",
        description="GitOps declarative reconciler for containers: Git in, running services out.",
        epilog="example:\n  gitorch validate --path examples/repo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gitorch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    validate.register(subparsers)
    plan.register(subparsers)
    apply.register(subparsers)
    daemon.register(subparsers)
    proxy.register(subparsers)
    status.register(subparsers)
    nodes.register(subparsers)
    drain.register(subparsers)
    promote.register(subparsers)
    history.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # `kill -QUIT PID` prints every thread's stack to stderr and the process goes on: how
    # to see where a stuck daemon or watch is, without a debugger on the host.
    if hasattr(signal, "SIGQUIT") and sys.stderr is not None:
        faulthandler.register(signal.SIGQUIT, all_threads=True, chain=False)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except GitorchError as exc:
        if os.environ.get("GITORCH_DEBUG"):
            raise
        stderr().print(f"[red]error:[/] {escape(exc.message)}")
        for line in exc.detail:
            stderr().print(f"  {escape(line)}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

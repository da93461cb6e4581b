"""The ``gitorch`` command: argument parsing, dispatch, and error reporting.

A user mistake ends as one clear line on stderr (plus detail lines) and exit code 1,
never a traceback; ``GITORCH_DEBUG=1`` shows the traceback for bug reports.

Sub-commands load lazily: ``gitorch --help`` lists every command from :data:`COMMANDS`
without importing any of them, and ``gitorch validate`` imports the validate module only
(not the reconciler, the data plane or the API server), so a command starts in the time
its own work needs. ``tests/cli/test_cli_imports.py`` holds both properties.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from gitorch import __version__
from gitorch.errors import GitorchError
from gitorch.stack_dump import print_stacks_on_sigquit

#: Every sub-command, in the order ``--help`` lists them: (name, the module whose
#: ``register(subparsers)`` adds its parser, the one-line help ``--help`` shows). The help
#: line must be the one the module registers (a test compares them).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("validate", "validate", "check every manifest against the schemas and each other"),
    (
        "plan",
        "plan",
        "what would change, field by field, where replicas land, which rollout steps run",
    ),
    ("apply", "apply", "one reconcile: apply the plan and wait until it has converged or failed"),
    (
        "daemon",
        "daemon",
        "the reconciler: poll Git, react to webhooks and local commits, self-heal, serve the API",
    ),
    ("proxy", "proxy", "the data plane as its own long-lived process: run, restart, status, stop"),
    ("status", "status", "services, replicas, versions, rollout phase, nodes, last error"),
    ("nodes", "nodes", "nodes, capacity, allocation, conditions"),
    ("volumes", "volumes", "volumes: node, access mode, size, users, phase; --reset a missing one"),
    (
        "drain",
        "drain",
        "move every replica off a node (through each service's strategy); --undo to stop",
    ),
    ("promote", "promote", "move a paused rollout on to its next step"),
    ("abort", "promote", "abort a rollout: new version's weight to 0 at once, roll back"),
    (
        "history",
        "history",
        "every applied revision: commit, author, signer, time, result, trigger, summary",
    ),
    ("logs", "logs", "a service's output: live replicas, or --previous: the last dead ones"),
    ("audit", "audit", "the audit log: who did what, when; --verify proves it was not edited"),
    ("state", "state", "the state store: migrate a cluster between a state directory and etcd"),
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; gitorch reserves 2 for "plan has changes"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None, *, every: bool = False) -> argparse.ArgumentParser:
    """The parser, with the full sub-parser of ``command`` (the module is imported) and a
    placeholder carrying only the help line for every other one; ``every``: all in full."""
    parser = _Parser(
        prog="gitorch",
        description="GitOps declarative reconciler for containers: Git in, running services out.",
        epilog="example:\n  gitorch validate --path examples/repo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gitorch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    chosen = {module for name, module, _ in COMMANDS if every or name == command}
    registered: set[str] = set()
    for name, module, help_text in COMMANDS:
        if module not in chosen:
            subparsers.add_parser(name, help=help_text, add_help=False)
        elif module not in registered:
            importlib.import_module(f"gitorch.commands.{module}").register(subparsers)
            registered.add(module)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: the first word that is not an option (the
    top-level parser has only flags, none of which takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


#: The exit code of a command whose output's reader went away: 128 + SIGPIPE, what a
#: shell reports for git or grep killed by SIGPIPE in the same place.
BROKEN_PIPE_EXIT = 141


#: What writing a command's output may fail with, other than its reader leaving.
_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is left in its buffer goes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a caller's stream, as in the tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    print_stacks_on_sigquit()
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(words))
    args = parser.parse_args(words)
    try:
        code = int(args.run(args))
    except GitorchError as exc:
        if os.environ.get("GITORCH_DEBUG"):
            raise
        from rich.markup import escape

        from gitorch.commands.common import stderr

        stderr().print(f"[red]error:[/] {escape(exc.message)}")
        for line in exc.detail:
            stderr().print(f"  {escape(line)}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`gitorch plan | head`): as a tool killed by SIGPIPE,
        # end quietly with 128 + SIGPIPE, and let nothing more reach the closed pipe
        # (Python's own exit flushes stdout once more and would print a traceback).
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    except OSError as exc:
        # Output that cannot be written (`> /dev/full`, a full disk or quota): one
        # line, not a traceback. Errors on named files are the commands' to report.
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise
        _silence_stdout()
        sys.stderr.write(f"error: cannot write the output: {exc.strerror}\n")
        return 1
    if argv is None:  # the process's own command (not a caller's, as in the tests)
        common = sys.modules.get("gitorch.commands.common")
        if common is not None:
            common.exit_at_once(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""``gitorch validate``: parse and check every manifest; exit 0 valid, 1 invalid."""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from pathlib import Path

from gitorch.commands.common import (
    add_format_option,
    add_host_path_option,
    add_source_options,
    add_state_option,
    allowed_host_paths,
    keep_until_exit,
    one_shot_gc,
    open_args_source,
    print_json,
    print_line,
    read_snapshot,
    reserved_ports,
    separate_trees_hint,
    short,
    stderr,
    stdout,
)
from gitorch.errors import GitorchError
from gitorch.manifests import LoadResult, ManifestLoader
from gitorch.sources import Snapshot, Source

EXAMPLE = """example:
  gitorch validate --path examples/repo
  gitorch validate --repo https://git.example.com/shop/deploy.git --ref main --format json
  gitorch validate --worktree --path examples/repo --watch
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check every manifest against the schemas and each other",
        description="Parse and check every manifest against schemas/ and the cross-references "
        "(dependsOn, volumes, services named in affinity). Reports all problems at once as "
        "PATH:LINE:COLUMN: field: message. Exit 0 valid, 1 invalid.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_options(parser)
    add_state_option(parser)
    add_format_option(parser, "json")
    add_host_path_option(parser, reads_daemon=True)
    parser.add_argument(
        "--watch",
        action="store_true",
        help="validate again on every change of a local checkout (commit or edit)",
    )
    parser.set_defaults(run=run)


def validate_once(
    args: argparse.Namespace, loader: ManifestLoader, source: Source | None = None
) -> tuple[Snapshot, LoadResult]:
    snapshot = read_snapshot(args, source)
    result = loader.load(
        snapshot.files,
        revision=snapshot.revision,
        root_path=snapshot.root_path,
        problems=snapshot.problems,
    )
    return snapshot, result


def report(args: argparse.Namespace, snapshot: Snapshot, result: LoadResult) -> int:
    if args.format == "json":
        counts = Counter(obj.kind for obj in result.state.objects()) if result.state else Counter()
        print_json(
            {
                "valid": result.ok,
                "revision": snapshot.revision,
                "path": snapshot.root_path,
                "files": len(snapshot.files),
                "objects": {
                    kind: counts.get(kind, 0)
                    for kind in ("Service", "Node", "Volume", "NodePool")
                    if kind != "NodePool" or counts.get(kind)
                },
                "diagnostics": [d.to_json() for d in result.diagnostics],
            }
        )
        return 0 if result.ok else 1
    where = f"{snapshot.root_path or '.'} at {short(snapshot.revision)}"
    if result.state is not None:
        counts = Counter(obj.kind for obj in result.state.objects())
        kinds = ("Service", "Node", "Volume", *(("NodePool",) if counts["NodePool"] else ()))
        summary = ", ".join(f"{counts[k]} {k}{'s' if counts[k] != 1 else ''}" for k in kinds)
        # Written without rich where it can be (common.print_line): a success imports
        # only what it prints with. Problems below are rare and may take rich's time.
        print_line(("✓", "green"), f" valid: {summary} in {len(snapshot.files)} files ({where})")
        return 0
    from rich.markup import escape

    for diagnostic in result.diagnostics:
        stdout().print(escape(str(diagnostic)))
    files = len({d.path for d in result.diagnostics})
    count = len(result.diagnostics)
    stderr().print(
        f"[red]✗[/] {count} problem{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''} ({escape(where)})"
    )
    hint = separate_trees_hint(snapshot, args.path, (d.path for d in result.diagnostics))
    if hint is not None:
        stderr().print(f"[yellow]{escape(hint)}[/]")
    return 1


def run(args: argparse.Namespace) -> int:
    loader = ManifestLoader(
        reserved_ports=reserved_ports(args), allowed_host_paths=allowed_host_paths(args)
    )
    if not args.watch:
        one_shot_gc()
        snapshot, result = validate_once(args, loader)
        keep_until_exit(snapshot, result)
        return report(args, snapshot, result)
    return _watch(args, loader)


def _watch(args: argparse.Namespace, loader: ManifestLoader) -> int:
    from rich.markup import escape

    from gitorch.sources.watch import RepositoryWatcher

    # Fails early for a URL or a missing path; kept, so that each commit reads only the
    # files it changed (the loader, too, parses only those).
    source = open_args_source(args)
    root = Path(args.repo)
    if not root.is_dir():
        raise GitorchError("--watch needs a local checkout for --repo")
    changed = threading.Event()
    changed.set()
    last_code = 0
    # A commit ends when its ref is renamed into place: validated at once, unless the
    # working tree is what is read (--worktree), where a checkout's files may still be
    # coming. Other changes are bursts of writes within milliseconds; 50 ms of quiet
    # ends one. (A validation that starts mid-burst is followed by another: the burst
    # keeps poking.)
    with RepositoryWatcher(root, changed.set, debounce=0.05, at_ref_update=not args.worktree):
        stderr().print(f"watching {escape(str(root))} (Ctrl-C to stop)")
        try:
            while True:
                if changed.wait(timeout=1.0):
                    changed.clear()
                    stderr().print(f"[dim]{time.strftime('%H:%M:%S')}[/]")
                    try:
                        snapshot, result = validate_once(args, loader, source)
                        # Record the verdict before printing it: Ctrl-C during the print
                        # must not leave the previous verdict as the exit code.
                        last_code = 0 if result.ok else 1
                        report(args, snapshot, result)
                    except GitorchError as exc:
                        stderr().print(f"[red]error:[/] {escape(exc.message)}")
                        last_code = 1
        except KeyboardInterrupt:
            return last_code

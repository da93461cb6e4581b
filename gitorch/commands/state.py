"""``gitorch state migrate --from SRC --to DST``: move a cluster's state between a state
directory (SQLite) and etcd, in either direction."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from rich.markup import escape

from gitorch.commands.common import looked_in, stdout
from gitorch.errors import ConfigError, StateError
from gitorch.live.inventory import cluster_identity, write_cluster_name
from gitorch.state import DaemonLock, StateStore
from gitorch.state.layout import STATE_DB
from gitorch.state.location import StateLocation, parse_location
from gitorch.state.migrate import copy_state
from gitorch.state.moved import mark_moved, set_aside_stale

EXAMPLE = """example:
  gitorch state migrate --from .gitorch --to etcd://10.0.0.1:2379,10.0.0.2:2379/shop
  gitorch state migrate --from etcd://10.0.0.1:2379/shop --to /var/lib/gitorch
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "state",
        help="the state store: migrate a cluster between a state directory and etcd",
        description="Manage where gitorch keeps its state.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    migrate = actions.add_parser(
        "migrate",
        help="copy every record (revisions, rollouts, inventory, audit...) to another store",
        description="Copy a cluster's whole state, ids included, from one store to an empty "
        "other: a state directory (SQLite) to an etcd namespace, so more daemons can join, "
        "or back. No daemon may run on either while it copies (stop it first); the copy is "
        "read back and compared. Replicas and the data plane keep running: their local "
        "files stay in the state directory, which becomes the daemons' --runtime-dir.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="DIR|etcd://...")
    migrate.add_argument("--to", dest="target", required=True, metavar="DIR|etcd://...")
    migrate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    source, target = parse_location(args.source), parse_location(args.target)
    if source == target:
        raise ConfigError("--from and --to name the same store")
    if source.directory is not None and not (source.directory / "state.db").is_file():
        raise StateError(f"no gitorch state {looked_in(source, None)}")
    # A directory whose state moves to etcd: left as the daemons' runtime dir, marked moved.
    left = source.directory if target.etcd is not None else None
    with ExitStack() as stack:
        for location in (source, target):
            _no_daemon(location, stack)
        src = stack.enter_context(StateStore(source, readonly=True))
        # Back into the directory the state left: its database is the stale copy.
        aside = set_aside_stale(target.directory) if target.directory is not None else None
        dst = stack.enter_context(StateStore(target))
        local = source.directory or Path(".gitorch")
        cluster = cluster_identity(src, local, create=False)
        snapshot = copy_state(src, dst, cluster)
        if target.directory is not None and cluster:
            write_cluster_name(target.directory, cluster)
        carried_key = _carry_digest_key(src, dst, local, target)
        if left is not None:
            mark_moved(left, target.describe())
    counts = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in snapshot.counts().items())
    stdout().print(
        f"copied {escape(source.describe())} to {escape(target.describe())}: {escape(counts)}"
    )
    stdout().print(f"cluster {escape(cluster or '-')} (its replicas' label) carried over")
    if carried_key:
        stdout().print("the key of secret digests carried over (no secret looks rotated)")
    if aside is not None:
        stdout().print(
            f"the stale database the state left in {escape(str(target.directory))} is kept "
            f"in {escape(str(aside))}"
        )
    if left is not None:
        stdout().print(
            f"{escape(str(left))} keeps its {STATE_DB}, marked as moved: a daemon "
            f"or command given --state {escape(str(left))} now refuses and names "
            f"{escape(target.describe())}"
        )
        stdout().print(
            "next: start each daemon with "
            f"--state {escape(target.describe())} --runtime-dir {escape(str(left))} "
            "--name NAME (the runtime dir holds the replicas' records and the proxy's socket)"
        )
    elif target.directory is not None and aside is not None:
        stdout().print(f"next: start the daemon with --state {escape(str(target.directory))}")
    elif target.directory is not None:
        stdout().print(
            f"next: start the daemon with --state {escape(str(target.directory))} (process "
            "replicas' records stay in the etcd daemons' --runtime-dir: migrate into that "
            "directory to keep them)"
        )
    return 0


def _carry_digest_key(
    source: StateStore, target: StateStore, local: Path, location: StateLocation
) -> bool:
    """The key the source's secret digests were made with, into the target (True when
    there was one): with a new key every digest in the copied records would differ from
    the next one made, and the first daemon would roll every service that uses a secret."""
    from gitorch.apply.session import secret_digest_key
    from gitorch.secrets import save_digest_key
    from gitorch.state.etcd.backend import EtcdBackend

    key = secret_digest_key(source, local, create=False)
    if key is None:
        return False
    if isinstance(target.backend, EtcdBackend):
        target.backend.restore_secret_digest_key(key)
    elif location.directory is not None:
        save_digest_key(location.directory, key)
    return True


def _no_daemon(location: StateLocation, stack: ExitStack) -> None:
    """Hold a state directory's daemon lock for the copy; refuse an etcd namespace a
    daemon leads."""
    if location.directory is not None:
        if location.directory.exists():
            stack.enter_context(DaemonLock(location.directory))
        return
    from gitorch.state.etcd.backend import EtcdBackend
    from gitorch.state.etcd.election import read_leadership

    try:
        store = StateStore(location, readonly=True)
    except StateError as exc:
        if exc.message.startswith("no gitorch state"):
            return
        raise
    with store:
        assert isinstance(store.backend, EtcdBackend)
        leader = read_leadership(store.backend)["leader"]
    if leader:
        raise StateError(
            f"the daemon {leader} leads {location.describe()}: stop every daemon first",
            detail=("gitorch status --state ... lists them",),
        )

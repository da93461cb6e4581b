"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import builtins
import gc
import json
import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitorch.errors import StateError

if TYPE_CHECKING:  # rich, the sources (gitpython) and the store load when first used
    from rich.console import Console

    from gitorch.manifests.model import DesiredState
    from gitorch.sources import Snapshot, Source
    from gitorch.sources.verify import SignaturePolicy, Verification
    from gitorch.state import StateStore
    from gitorch.state.location import StateLocation

#: Line width when the output is not a terminal (a pipe, a file) and $COLUMNS is unset:
#: wide enough that no table cell is cut or wrapped, so ``| grep`` and ``| awk`` see one
#: row per line, as with kubectl. (rich would assume 80 columns.) Tables take only the
#: width their cells need.
PIPE_WIDTH = 100_000

#: How to point a reading command elsewhere, for messages that found nothing.
ELSEWHERE_STATE = "another state directory: --state DIR or $GITORCH_STATE"
ELSEWHERE = f"{ELSEWHERE_STATE}; a running daemon: --server URL"


class StateNotFound(StateError):
    """No state store in the directory a command reads (nothing was ever applied there)."""


def duration(text: str) -> float:
    """argparse type of every time option: ``30s``, ``1m``, ``500ms``, ``1m30s`` or plain
    seconds (``45``, ``2.5``), read as manifests read durations; zero allowed."""
    from gitorch.manifests.quantities import QuantityError, parse_duration

    try:
        plain = float(text) if text.replace(".", "", 1).isdigit() else None
        return parse_duration(plain if plain is not None else text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> float:
    """:func:`duration` that must be more than zero (a poll interval, a timeout)."""
    seconds = duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than zero, not {text!r}")
    return seconds


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--repo --ref --path --worktree``: where the desired state comes from."""
    group = parser.add_argument_group("desired state")
    group.add_argument(
        "--repo",
        default=".",
        metavar="URL_OR_PATH",
        help="a Git URL (https://, ssh://, file://) or a local checkout (default: .)",
    )
    group.add_argument(
        "--ref", default=None, help="branch, tag or commit (default: the repo's HEAD branch)"
    )
    group.add_argument(
        "--path",
        default="",
        metavar="DIR",
        help="folder inside the repo that holds the manifests (default: the root)",
    )
    group.add_argument(
        "--worktree",
        action="store_true",
        help="read the working tree of a local checkout, uncommitted edits included",
    )


def add_verify_options(parser: argparse.ArgumentParser) -> None:
    """``--verify-commits --trusted-keys DIR --allowed-signers FILE``: the signed-commit
    policy (plan, apply, daemon)."""
    group = parser.add_argument_group("signed commits")
    group.add_argument(
        "--verify-commits",
        action="store_true",
        help="refuse a commit unless it is signed by a trusted key (--trusted-keys and/or "
        "--allowed-signers): unsigned, unknown-key and bad signatures are never applied",
    )
    group.add_argument(
        "--trusted-keys",
        type=Path,
        default=None,
        metavar="DIR",
        help="a GnuPG home holding the public keys trusted to sign commits",
    )
    group.add_argument(
        "--allowed-signers",
        type=Path,
        default=None,
        metavar="FILE",
        help="SSH keys trusted to sign commits, in git's allowed-signers format "
        "(gpg.ssh.allowedSignersFile: PRINCIPAL KEYTYPE KEY per line)",
    )


def signature_policy(args: argparse.Namespace) -> SignaturePolicy | None:
    """The policy ``--verify-commits`` asks for (None: commits are not verified); checked
    before anything is fetched or applied."""
    from gitorch.errors import ConfigError
    from gitorch.sources.verify import SignaturePolicy

    if not args.verify_commits:
        if args.trusted_keys is not None or args.allowed_signers is not None:
            raise ConfigError("--trusted-keys and --allowed-signers need --verify-commits")
        return None
    if getattr(args, "worktree", False):
        raise ConfigError("--verify-commits checks commits: the working tree has no signature")
    policy = SignaturePolicy(args.trusted_keys, args.allowed_signers)
    policy.check()
    return policy


def verified_snapshot(args: argparse.Namespace) -> tuple[Snapshot, Verification | None]:
    """The snapshot at ``--ref``, and the signed-commit policy's verdict on its commit
    (None without ``--verify-commits``)."""
    policy = signature_policy(args)
    source = open_args_source(args)
    snapshot = read_snapshot(args, source)
    return snapshot, source.verify(snapshot.revision, policy) if policy is not None else None


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    """``--secrets-dir`` and ``--age-key``: where secret values come from (apply, daemon,
    plan)."""
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="folder holding the files that `secretFile` references, `expose.tls` and "
        "Nodes' `runtime.tls`/`runtime.ssh` name",
    )
    parser.add_argument(
        "--age-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="age identity file (age-keygen's, mode 600) that decrypts the repo's Secrets",
    )


def resolved_secrets(args: argparse.Namespace, desired: DesiredState) -> DesiredState:
    """``desired`` with the digests of its secret values (``plan --secrets-dir/--age-key``
    on the daemon's host, with its state directory), so a rotated value shows as a
    sensitive change; as it is otherwise (plan never needs the values)."""
    if args.secrets_dir is None and args.age_key is None:
        return desired
    from gitorch.apply.session import secret_digest_key
    from gitorch.secrets import SecretValues, load_age_identities

    key = None
    store = open_store(args, readonly=True)
    if store is not None:
        with store:
            key = secret_digest_key(store, state_dir(args), create=False)
    if key is None:
        stderr().print(
            "note: no secret digest key in the state (nothing was applied there, "
            "or it is not readable): changed secret values are not shown"
        )
        return desired
    identities = load_age_identities(args.age_key) if args.age_key else ()
    return SecretValues(args.secrets_dir, identities, key).resolve(desired)


def add_state_option(
    parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup,
    runtime_into: argparse.ArgumentParser | None = None,
) -> None:
    """``--state`` on ``parser``, and ``--runtime-dir`` on ``runtime_into`` (default: the
    same parser; a mutually exclusive group of --state and --server passes its parser)."""
    parser.add_argument(
        "--state",
        default=None,
        metavar="DIR|etcd://HOST:PORT[,...][/NAMESPACE]",
        help="where the state lives: a directory (SQLite), or an etcd cluster and the "
        "namespace of this gitorch cluster (default: $GITORCH_STATE, else ./.gitorch)",
    )
    (runtime_into or parser).add_argument(
        "--runtime-dir",
        default=None,
        metavar="DIR",
        help="with etcd state: this host's local files (process replicas' records, the "
        "proxy's socket, Git's cache), shared by the daemons of one host "
        "(default: $GITORCH_RUNTIME_DIR, else ./.gitorch); with a state directory: that "
        "directory",
    )


def add_format_option(parser: argparse.ArgumentParser, *choices: str) -> None:
    parser.add_argument(
        "--format",
        default="text",
        choices=("text", *choices),
        help="output format (json: machine output on stdout, nothing else)",
    )


def state_location(args: argparse.Namespace) -> StateLocation:
    """``--state``, else ``$GITORCH_STATE``, else ``./.gitorch``: a directory or etcd."""
    from gitorch.state.location import parse_location

    chosen = getattr(args, "state", None) or os.environ.get("GITORCH_STATE") or ".gitorch"
    return parse_location(str(chosen))


def state_dir(args: argparse.Namespace) -> Path:
    """The local directory: the state directory itself, or with etcd state the runtime
    directory (``--runtime-dir``, else ``$GITORCH_RUNTIME_DIR``, else ``./.gitorch``)."""
    given = getattr(args, "state", None) or os.environ.get("GITORCH_STATE") or ".gitorch"
    # Not parsed here: validate and plan read the cache folder without loading the store.
    if not str(given).startswith(("etcd://", "etcds://")):
        return Path(given)
    chosen = (
        getattr(args, "runtime_dir", None) or os.environ.get("GITORCH_RUNTIME_DIR") or ".gitorch"
    )
    return Path(chosen)


def local_state_dir(args: argparse.Namespace) -> Path | None:
    """The state directory of ``--state`` (else ``$GITORCH_STATE``, else ``./.gitorch``);
    None for etcd state. Parses nothing: the store's modules stay unloaded."""
    given = getattr(args, "state", None) or os.environ.get("GITORCH_STATE") or ".gitorch"
    return None if str(given).startswith(("etcd://", "etcds://")) else Path(given)


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime``: the node driver when the repo declares no Node."""
    parser.add_argument(
        "--runtime",
        default=None,
        choices=("docker", "process"),
        help="default node driver when the repo declares no Node "
        "(default: docker if a Docker engine answers, else process)",
    )


def has_state(location: StateLocation | Path) -> bool:
    """Whether ``location`` holds a state store (``apply`` or ``daemon`` ran there)."""
    from gitorch.state.location import StateLocation

    if isinstance(location, StateLocation) and location.etcd is not None:
        from gitorch.state import StateStore

        try:
            StateStore(location, readonly=True).close()
        except StateNotFound:
            return False
        except StateError as exc:
            if exc.message.startswith("no gitorch state"):
                return False
            raise
        return True
    from gitorch.state.layout import STATE_DB

    directory = location.directory if isinstance(location, StateLocation) else location
    assert directory is not None
    return (directory / STATE_DB).is_file()


def require_state(location: StateLocation | Path) -> None:
    """Raise :class:`StateNotFound`, saying where it looked, when there is no store."""
    if not has_state(location):
        raise StateNotFound(
            f"no gitorch state {looked_in(location, None)} (gitorch apply or gitorch daemon "
            "creates it)",
            detail=(ELSEWHERE,),
        )


def local_actor() -> str:
    """The audit actor of a CLI action on this host: ``user:USER@HOST``."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER: the uid is what is known
        user = f"uid{os.getuid()}"
    return f"user:{user}@{socket.gethostname()}"


def open_store(args: argparse.Namespace, *, readonly: bool) -> StateStore | None:
    """The store of ``--state`` (None when a read-only command finds none there; then the
    store's code is not imported)."""
    location = state_location(args)
    if readonly and not has_state(location):
        return None
    from gitorch.state import StateStore

    return StateStore(location, readonly=readonly)


def looked_in(state: StateLocation | Path | None, server: str | None) -> str:
    """Where a reading command looked: ``in /abs/state``, ``in etcd://...`` or ``on the
    daemon at URL``."""
    from gitorch.state.location import StateLocation

    if server:
        return f"on the daemon at {server}"
    assert state is not None
    if isinstance(state, StateLocation):
        if state.etcd is not None:
            return f"in {state.etcd.url()}"
        assert state.directory is not None
        state = state.directory
    return f"in {state.absolute()}"


def open_args_source(args: argparse.Namespace) -> Source:
    from gitorch.sources import open_source

    return open_source(
        args.repo,
        cache_root=state_dir(args) / "cache",
        worktree=args.worktree,
        ref=args.ref,
    )


def read_snapshot(args: argparse.Namespace, source: Source | None = None) -> Snapshot:
    """Fetch (remote sources) and read the manifests at ``--ref``/``--path``.

    An unreachable remote is not fatal when the cache holds the ref: the cached commit is
    read and a warning goes to stderr.
    """
    source = source or open_args_source(args)
    fetched = source.fetch()
    if not fetched.reachable:
        stderr().print(
            f"[yellow]warning:[/] remote not reachable ({fetched.error}); using the cached copy"
        )
    if fetched.history_rewritten:
        stderr().print(
            f"[yellow]warning:[/] history rewritten: {fetched.old_sha} is no longer an ancestor of {fetched.new_sha}"
        )
    snapshot = source.snapshot(args.ref, args.path)
    note_uncommitted(args, source, snapshot)
    return snapshot


#: Uncommitted files named in the note before "(+N more)".
UNCOMMITTED_SHOWN = 3


def note_uncommitted(args: argparse.Namespace, source: Source, snapshot: Snapshot) -> None:
    """A note on stderr when a local checkout's commit is read (no ``--ref``, no
    ``--worktree``) while manifests under ``--path`` have uncommitted changes: the
    command reads the commit, as a merge would apply it, not the edited files."""
    uncommitted = getattr(source, "uncommitted", None)
    if args.ref is not None or getattr(args, "worktree", False) or uncommitted is None:
        return
    changed = uncommitted(args.path)
    if not changed:
        return
    shown = ", ".join(changed[:UNCOMMITTED_SHOWN])
    more = (
        f" (+{len(changed) - UNCOMMITTED_SHOWN} more)" if len(changed) > UNCOMMITTED_SHOWN else ""
    )
    print_line(
        ("note:", "yellow"),
        f" uncommitted changes to {len(changed)} manifest file(s) are not read ({shown}{more}):"
        f" this reads the commit {snapshot.revision[:7]}; --worktree reads the working tree",
        err=True,
    )


def separate_trees(paths: Iterable[str]) -> list[str]:
    """The folders that hold manifests with no ancestor folder holding any, sorted: each
    is the top of a separate tree (``examples/repo``, ``tests/plans/x/manifests``...)."""
    folders = {posixpath.dirname(path) for path in paths}
    return sorted(
        folder
        for folder in folders
        if not any(
            other != folder and (other == "" or folder.startswith(f"{other}/")) for other in folders
        )
    )


#: Separate trees named in the hint before "(+N more)".
TREES_SHOWN = 4


def separate_trees_hint(snapshot: Snapshot, path_option: str, failed: Iterable[str]) -> str | None:
    """A hint for a failed load of manifests from several separate trees when no --path
    was given (the repository root of a repo that also holds tests or examples, read as
    one desired state); None otherwise. ``failed``: the paths of files with problems."""
    if path_option.strip("/"):
        return None
    trees = separate_trees(f.path for f in snapshot.files)
    if len(trees) < 2:
        return None
    bad = {posixpath.dirname(path) for path in failed}
    clean = [t for t in trees if not any(d == t or d.startswith(f"{t}/") for d in bad)]
    named = ", ".join(trees[:TREES_SHOWN])
    if len(trees) > TREES_SHOWN:
        named += f" (+{len(trees) - TREES_SHOWN} more)"
    return (
        f"hint: these manifests come from {len(trees)} separate folders ({named}), read as "
        f"one desired state because no --path was given; to read one: --path {(clean or trees)[0]}"
    )


_stdout: Console | None = None
_stderr: Console | None = None


def stdout() -> Console:
    global _stdout
    if _stdout is None:
        from rich.console import Console

        _stdout = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
    return _stdout


def stderr() -> Console:
    global _stderr
    if _stderr is None:
        from rich.console import Console

        _stderr = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))
    return _stderr


#: SGR parameters of the style words written without rich (:func:`sgr_around`): what
#: rich writes for them in each of its colour systems (a standard colour keeps its number
#: in 256 colours and truecolour). Attributes come first, in rich's order (by number).
_SGR_ATTRIBUTES = {"bold": "1", "dim": "2"}
_SGR_COLOURS = {
    "black": "30",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
    "white": "37",
}


def sgr_around(style: str, colours: bool) -> tuple[str, str] | None:
    """What rich writes before and after a text of ``style`` (words: bold, dim, at most
    one standard colour) on a terminal; ``colours`` False: as under ``NO_COLOR``, which
    drops colours and keeps attributes. None: a style not spelled so (rich decides)."""
    attributes: set[str] = set()
    colour: list[str] = []
    for word in style.split():
        if word in _SGR_ATTRIBUTES:
            attributes.add(_SGR_ATTRIBUTES[word])
        elif word in _SGR_COLOURS and not colour:
            colour.append(_SGR_COLOURS[word])
        else:
            return None
    codes = ";".join([*sorted(attributes, key=int), *(colour if colours else [])])
    return (f"\x1b[{codes}m", "\x1b[0m") if codes else ("", "")


def escape_codes_around(stream: Any) -> Callable[[str], tuple[str, str] | None] | None:
    """For a stream rich's decision is plain for (:func:`_escape_codes`): what rich would
    write around a text of a style there (nothing off a terminal); None: ask rich."""
    codes = _escape_codes(stream)
    if codes is None:
        return None
    if not codes:
        return lambda style: ("", "")
    colours = not _no_colour()
    return lambda style: sgr_around(style, colours)


#: What rich may change in a markup string: markup and its escapes (``[``, ``\``) and
#: emoji codes (``:name:``; this pattern holds rich's). A line holding one, or a control
#: character, is printed by rich.
_RICH_READS = re.compile(r"[\[\\]|:\S*:")


def print_line(*parts: str | tuple[str, str], err: bool = False) -> None:
    """Print one line made of ``parts`` (plain text, or (text, style) with a style of
    :func:`sgr_around`) on stdout (``err``: stderr): byte for byte what
    ``stdout().print(markup)`` prints with the parts escaped, but without importing rich
    where its choice is plain to make (``validate``'s one line of success took ~30 ms of
    CPU importing rich, 3% of validating 2,000 Services). Escape codes are written when
    rich would write them: a terminal (``TTY_COMPATIBLE``, ``FORCE_COLOR``, else
    ``isatty``) that is not ``TERM=dumb``; colours dropped under ``NO_COLOR``. Windows,
    Jupyter and IDLE consoles, and text holding a character rich reads (markup, emoji
    codes, control characters), go through rich."""
    stream = sys.stderr if err else sys.stdout
    line = "".join(part if isinstance(part, str) else part[0] for part in parts)
    around = escape_codes_around(stream)
    styles = [around(part[1]) if around else None for part in parts if not isinstance(part, str)]
    if around is None or None in styles or not line.isprintable() or _RICH_READS.search(line):
        from rich.markup import escape

        markup = "".join(
            escape(part) if isinstance(part, str) else f"[{part[1]}]{escape(part[0])}[/]"
            for part in parts
        )
        (stderr() if err else stdout()).print(markup)
        return
    pieces: list[str] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
            continue
        before, after = around(part[1]) or ("", "")
        pieces.append(f"{before}{part[0]}{after}" if part[0] else "")
    stream.write("".join(pieces) + "\n")
    stream.flush()


def _no_colour() -> bool:
    return os.environ.get("NO_COLOR", "") != ""


def _escape_codes(stream: Any) -> bool | None:
    """Whether rich's ``Console`` on ``stream`` would write escape codes (its
    ``is_terminal`` and dumb-terminal checks); None where rich decides otherwise
    (Windows' consoles, Jupyter, IDLE)."""
    if sys.platform == "win32" or "get_ipython" in vars(builtins):
        return None
    if getattr(sys.stdin, "__module__", "").startswith("idlelib"):
        return None
    environ = os.environ
    compatible = environ.get("TTY_COMPATIBLE", "")
    force_colour = environ.get("FORCE_COLOR")
    if compatible in ("0", "1"):
        terminal = compatible == "1"
    elif force_colour is not None:
        terminal = force_colour != ""
    else:
        try:
            terminal = bool(stream.isatty())
        except (AttributeError, ValueError):  # a replaced or closed stream
            terminal = False
    return terminal and environ.get("TERM", "").lower() not in ("dumb", "unknown")


def _width(stream: Any) -> int | None:
    """None (rich decides: the terminal's width, or $COLUMNS) unless ``stream`` is a pipe
    or a file and $COLUMNS is unset: then :data:`PIPE_WIDTH`."""
    if os.environ.get("COLUMNS"):
        return None
    try:
        interactive = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        interactive = False
    return None if interactive else PIPE_WIDTH


def one_shot_gc() -> None:
    """For a command that runs once and exits (validate, plan): the objects it builds
    (documents, typed models, diffs: ~10^6 for 2,000 Services) mostly live until exit, and
    the cyclic collector walks every one of them at least once for nothing: ~10% of a
    plan's CPU with the default thresholds, still 70-100 ms of ``plan`` and ~30 ms of
    ``validate`` (2,000 Services) with young collections 70x rarer, as this did before
    (bench/bench_cli_start.py). So the collector is off until exit: memory is still freed
    by reference counting, only reference cycles wait for the exit (~30,000 objects,
    +13 MB of resident memory for that plan: 121 -> 134 MB). Long-running commands (the
    daemon, ``--watch``) keep the defaults.

    It also marks the process as one that may leave without tearing its heap down
    (:func:`exit_at_once`)."""
    global _one_shot
    gc.disable()
    _one_shot = True


#: Set by :func:`one_shot_gc`: the command runs once and then the process ends.
_one_shot = False
#: What a one-shot command built, held until its process ends (:func:`keep_until_exit`).
_kept: list[Any] = []


def keep_until_exit(*values: Any) -> None:
    """Hold ``values`` (a plan, the desired and live state) until a one-shot command's
    process ends (:func:`exit_at_once`), so they are not freed one object at a time when
    the command returns: the kernel reclaims them at once (~15 ms of a 2,000-Service
    plan's CPU, ~6 ms of a validate's). A later call (a caller that runs commands in one
    process, as the tests do) replaces what an earlier one held."""
    if _one_shot:
        _kept[:] = values


def exit_at_once(code: int) -> None:
    """End a one-shot command's process (:func:`one_shot_gc`) with ``code`` as Python
    would, minus the teardown of its heap: the exit handlers run (``atexit``: logging's
    flush, temporary files, finalizers registered there) and the standard streams are
    flushed, then the process ends without clearing every module and collecting every
    cycle one object at a time, which the kernel does at once by reclaiming the memory
    (~50 ms of ``validate``'s CPU and ~100 ms of ``plan``'s for 2,000 Services: a fifth
    of what ``plan`` does beyond ``validate``; bench/bench_cli_start.py).

    Returns (and the caller exits normally) for a command that is not one-shot, when a
    thread other than the main one is still running (Python would wait for it), and when
    a stream cannot be flushed (a closed pipe: Python's own exit reports it)."""
    if not _one_shot:
        return
    threading = sys.modules.get("threading")
    if threading is not None and any(
        t is not threading.main_thread() and not t.daemon and t.is_alive()
        for t in threading.enumerate()
    ):
        return
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # (a closed pipe, or a stream closed meanwhile)
        return
    os._exit(code)


def write_all(binary: Any, data: bytes) -> None:
    """Write all of ``data`` to the binary stream ``binary`` and flush it. A buffered
    writer whose raw stream fails after a partial write (the reader of a pipe went away,
    a full disk) reports the bytes written instead of the error: what is left is written
    again, so the error is raised (and reported by the CLI) rather than the output cut
    short in silence."""
    view = memoryview(data)
    while view:
        written = binary.write(view)
        view = view[written if written is not None else len(view) :]
    binary.flush()


def write_pieces(binary: Any, pieces: Iterable[bytes]) -> None:
    """:func:`write_all` of each of ``pieces`` in turn, the writing done by a thread while
    the next piece is made: a write releases the interpreter while the reader (a pipe's,
    a disk's) takes the bytes, so a long output (a first plan's JSON, ~14 MB for 2,000
    Services) is mostly written by the time its last piece is made. An error writing
    (the reader went away, a full disk) stops the making and is raised here, as
    :func:`write_all` would raise it."""
    import queue
    import threading

    waiting: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def writer() -> None:
        while (piece := waiting.get()) is not None:
            if not failed:
                try:
                    write_all(binary, piece)
                except BaseException as error:  # noqa: BLE001 - raised in the caller
                    failed.append(error)

    thread = threading.Thread(target=writer, name="gitorch-output", daemon=True)
    thread.start()
    try:
        for piece in pieces:
            if failed:
                break
            waiting.put(piece)
    finally:
        waiting.put(None)
        thread.join()
    if failed:
        raise failed[0]


def print_json(value: Any) -> None:
    """Machine output: one JSON document on stdout, never coloured, keys in their order.

    Written by orjson: the standard encoder runs in Python when indented, which made the
    JSON text most of ``gitorch status``'s own work with 4,000 replicas. The text is the
    standard encoder's but for floats in exponent form (``1e-5``, not ``1e-05``); what
    orjson refuses (an integer beyond 64 bits) goes through the standard encoder."""
    import orjson

    try:
        text = orjson.dumps(
            value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
        ).decode("utf-8")
    except orjson.JSONEncodeError:
        text = json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()


def short(sha: str | None) -> str:
    if not sha:
        return "-"
    return sha[:12] if len(sha) == 40 else sha


def running_daemon(args: argparse.Namespace) -> dict[str, Any]:
    """What the daemon of ``--state`` says of itself: ``daemon.json`` in a state directory;
    with etcd state, the leader's member record (else any member's). Empty when none runs
    (or etcd does not answer: the caller's defaults apply). Read once per command (plan
    asks for its ports, its host paths and its address: with etcd state, one read of etcd
    instead of three)."""
    found = getattr(args, "_running_daemon", None)
    if found is None:
        found = _read_running_daemon(args)
        args._running_daemon = found
    return dict(found)


def _read_running_daemon(args: argparse.Namespace) -> dict[str, Any]:
    given = getattr(args, "state", None) or os.environ.get("GITORCH_STATE") or ".gitorch"
    if not str(given).startswith(("etcd://", "etcds://")):  # validate loads no store
        try:
            data = json.loads((state_dir(args) / "daemon.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
    from gitorch.state import StateStore
    from gitorch.state.etcd.backend import EtcdBackend
    from gitorch.state.etcd.election import read_leadership

    try:
        with StateStore(state_location(args), readonly=True) as store:
            assert isinstance(store.backend, EtcdBackend)
            found = read_leadership(store.backend)
    except StateError:
        return {}
    # (a stand-in's record says nothing of a daemon: no API, no options)
    daemons = [m for m in found["members"] if m["role"] != "stand-in"]
    members = sorted(daemons, key=lambda m: m["role"] != "leader")
    return dict(members[0]) if members else {}


def reserved_ports(args: argparse.Namespace) -> dict[int, str]:
    """Ports gitorch's daemon uses, which no Service may expose: the ``--listen`` port of
    the daemon of ``--state`` as it last wrote it (:func:`running_daemon`), else the
    default."""
    try:
        listen = str(running_daemon(args)["listen"])
        port = int(listen.rpartition(":")[2])
    except (ValueError, KeyError, TypeError):
        return {7420: "the gitorch daemon's API and webhook (default --listen 127.0.0.1:7420)"}
    return {port: f"the gitorch daemon's API and webhook (its --listen {listen})"}


def add_host_path_option(parser: argparse.ArgumentParser, *, reads_daemon: bool) -> None:
    """``--allow-host-path DIR`` (repeatable): where a Volume's ``hostPath`` may be.

    ``reads_daemon``: validate and plan check against the running daemon's list (from
    ``daemon.json``) when none is given, so they refuse what the daemon would refuse."""
    default = (
        "default: the running daemon's (daemon.json, or the leader's with etcd state), else none"
        if reads_daemon
        else "default: none, every hostPath is refused"
    )
    parser.add_argument(
        "--allow-host-path",
        action="append",
        default=None,
        metavar="DIR",
        help="a directory Volumes may bind with spec.hostPath (repeatable; " + default + ")",
    )
    parser.set_defaults(reads_daemon_host_paths=reads_daemon)


def allowed_host_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--allow-host-path`` directories (absolute, normalised); for validate and plan
    without the option, those of the daemon of ``--state`` (:func:`running_daemon`)."""
    given = getattr(args, "allow_host_path", None)
    if given is None and getattr(args, "reads_daemon_host_paths", False):
        found = running_daemon(args).get("allowHostPaths")
        given = [str(p) for p in found] if isinstance(found, list) else []
    return tuple(os.path.normpath(os.path.abspath(p)) for p in given or ())


def add_secrets_option(parser: argparse.ArgumentParser) -> None:
    """``--secrets-dir``: where Nodes' TLS and ssh files are (default: the daemon's)."""
    parser.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="folder holding the files Nodes' runtime.tls and runtime.ssh name "
        "(default: the running daemon's, from daemon.json)",
    )


def secrets_dir_of(args: argparse.Namespace) -> Path | None:
    """``--secrets-dir``, else that of the daemon of ``--state`` (``daemon.json``)."""
    given = getattr(args, "secrets_dir", None)
    if given is not None:
        return Path(given)
    try:
        data = json.loads((state_dir(args) / "daemon.json").read_text(encoding="utf-8"))
        found = data.get("secretsDir")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(found) if isinstance(found, str) and found else None

"""Noticing, at once, that a local checkout changed: a new commit or an edited file.

:class:`RepositoryWatcher` watches the working tree and the git directory with watchdog
(inotify on Linux) and calls ``on_change`` on its own worker thread, debounced: a burst of
events (``git commit`` writes objects, the index, a log and a ref) gives one call, made
``debounce`` seconds after the burst went quiet (and at the latest ``max_delay`` seconds
after it began, so a folder that never stops changing is still reported).

What counts: inside the git directory, ``HEAD``, ``packed-refs`` and anything under
``refs/`` (a commit, a checkout, a fetch, a reset); in the working tree, any file or folder
whose path has no component starting with "." (that also drops vim's ``.x.swp`` and emacs'
``.#x``), minus editor backup/temporary names (``x~``, ``#x#``, vim's ``4913`` probe).
Ignored: ``.git/objects`` churn, lock files, the index, logs.

A ref renamed into place ends a commit: git writes a ref (a branch, ``HEAD``,
``packed-refs``) to ``NAME.lock`` and renames it to ``NAME`` once the objects it names are
written, so nothing of that commit is left to come. With ``at_ref_update`` (callers that
read commits, not the working tree: the daemon, ``validate --watch`` without
``--worktree``) such a rename calls back at once instead of after the debounce; anything
else (an edit, a ref written in place, a rename seen as a deletion and a creation) still
waits out the debounce. A commit's other writes (objects, the index, logs) are not
counted, so one commit still gives one call.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import git
from watchdog.events import (
    DirModifiedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from gitorch.errors import SourceError

_log = logging.getLogger(__name__)

#: How long watchdog's inotify reader holds a rename's IN_MOVED_FROM for its IN_MOVED_TO
#: (seconds; watchdog's default is 0.5). Its queue sleeps out the whole delay once an
#: IN_MOVED_FROM is at its head, even when the IN_MOVED_TO paired it a moment later, and
#: every event behind waits too: ``git commit`` renames ``index.lock`` first, so a commit
#: reached the daemon ~0.55 s late whenever the reader took that rename in two halves
#: (issue 20: commit to first replica 0.77 s with 10 replicas against 0.42 s with 2; a
#: traced run: the first IN_MOVED_FROM to the trigger 0.568 s, 0.065 s in the others).
#: The halves of one rename come in one read of the inotify descriptor, microseconds
#: apart; a rename left unpaired is reported as a deletion and a creation, which the
#: watcher counts the same way (:meth:`RepositoryWatcher.relevant` of either path).
MOVE_PAIRING_DELAY = 0.02


def _prompt_move_pairing() -> None:
    """Set :data:`MOVE_PAIRING_DELAY` on watchdog's inotify move pairing (its class is
    ``InotifyMoveEventGrouper`` in watchdog 7, ``InotifyBuffer`` before; neither off
    Linux, where there is nothing to change)."""
    import importlib

    for module, name in (
        ("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),
        ("watchdog.observers.inotify_buffer", "InotifyBuffer"),
    ):
        try:
            holder = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        holder.delay = MOVE_PAIRING_DELAY
        return


_prompt_move_pairing()

_EDITOR_TEMP_RE = re.compile(r"(~$|^#.*#$|^4913$|\.sw[a-p]$|\.tmp$|^\.~lock\.)")


def _git_dirs(path: Path) -> list[Path]:
    """The git directory of ``path`` and, for a linked worktree, the common directory that
    holds the refs; empty for a plain folder."""
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return []
    try:
        dirs = {Path(repo.git_dir).resolve(), Path(repo.common_dir).resolve()}
    finally:
        repo.close()
    return sorted(dirs)


class _Handler(FileSystemEventHandler):
    """Filters raw events and pokes the watcher."""

    def __init__(self, watcher: RepositoryWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if isinstance(event, DirModifiedEvent):
            return  # a folder's mtime changes with every file in it; the file event counts
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        paths = [src]
        if dest:
            paths.append(dest)
        if any(self.watcher.relevant(os.fsdecode(p)) for p in paths):
            self.watcher.poke(complete=bool(dest) and self.watcher.ref_committed(src, dest))


class RepositoryWatcher:
    """Calls ``on_change`` (on a worker thread) when the checkout at ``path`` changes.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Exceptions raised by
    ``on_change`` are logged and do not stop the watcher.
    """

    def __init__(
        self,
        path: Path | str,
        on_change: Callable[[], None],
        debounce: float = 0.2,
        *,
        max_delay: float | None = None,
        commits_only: bool = False,
        at_ref_update: bool = False,
    ) -> None:
        """``commits_only``: only the git directory counts (and is watched): a new commit,
        a checkout, a fetch; edits of the working tree do not (the daemon applies commits,
        never the working tree: an edit there would wake it for nothing).

        ``at_ref_update``: a ref renamed into place (the end of a commit, see the module's
        docstring) calls back at once, not ``debounce`` seconds later; for callers that
        read commits, never for one that reads the working tree (a checkout or a stash
        writes working files after the ref)."""
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise SourceError(f"{path}: no such directory to watch")
        self.on_change = on_change
        self.debounce = debounce
        self.max_delay = max_delay if max_delay is not None else max(1.0, 5 * debounce)
        self.git_dirs = _git_dirs(self.path)
        self.commits_only = commits_only
        self.at_ref_update = at_ref_update
        self._cond = threading.Condition()
        self._complete = False
        self._first_event: float | None = None
        self._last_event = 0.0
        self._stopping = False
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._worker: threading.Thread | None = None

    # -- filtering ----------------------------------------------------------------------

    def relevant(self, raw: str) -> bool:
        """True when a change at path ``raw`` means the repository's content may differ."""
        path = Path(raw)
        for gdir in self.git_dirs:
            if path == gdir or gdir in path.parents:
                rel = path.relative_to(gdir).as_posix()
                if rel.endswith(".lock"):
                    return False
                return rel in ("HEAD", "packed-refs") or rel.startswith("refs/")
        if self.commits_only and self.git_dirs:
            return False  # (a plain folder has no commits: its files are its content)
        try:
            rel_parts = path.relative_to(self.path).parts
        except ValueError:
            return False
        if not rel_parts:
            return False
        if any(part.startswith(".") for part in rel_parts):
            return False
        return not _EDITOR_TEMP_RE.search(rel_parts[-1])

    def ref_committed(self, src: str, dest: str) -> bool:
        """Whether the rename of ``src`` to ``dest`` is git committing a ref's lock file
        (``refs/heads/main.lock`` to ``refs/heads/main``, ``HEAD.lock``, ...): the update
        is whole, and with it the commit it names. Only with ``at_ref_update``."""
        return (
            self.at_ref_update
            and src == f"{dest}.lock"
            and self.relevant(dest)
            and any(Path(dest).is_relative_to(gdir) for gdir in self.git_dirs)
        )

    # -- debouncing ---------------------------------------------------------------------

    def poke(self, *, complete: bool = False) -> None:
        """Record a relevant event; the worker calls ``on_change`` once things settle, or
        at once when ``complete`` (a ref committed: :meth:`ref_committed`)."""
        with self._cond:
            now = time.monotonic()
            self._last_event = now
            if self._first_event is None:
                self._first_event = now
            self._complete = self._complete or complete
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._first_event is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                assert self._first_event is not None
                due = min(self._last_event + self.debounce, self._first_event + self.max_delay)
                wait = due - time.monotonic()
                if wait > 0 and not self._complete:
                    self._cond.wait(wait)
                    continue  # re-evaluate: more events may have pushed the deadline
                self._first_event = None
                self._complete = False
            try:
                self.on_change()
            except Exception:  # the callback's bug must not kill the watcher
                _log.exception("repository watcher callback failed")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> RepositoryWatcher:
        """Begin watching (idempotent)."""
        if self._observer is not None:
            return self
        self._stopping = False
        handler = _Handler(self)
        observer = Observer()
        if self.commits_only and self.git_dirs:
            for gdir in self.git_dirs:
                observer.schedule(handler, str(gdir), recursive=True)
        else:
            observer.schedule(handler, str(self.path), recursive=True)
            for gdir in self.git_dirs:
                if gdir != self.path and self.path not in gdir.parents:
                    observer.schedule(handler, str(gdir), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._worker = threading.Thread(
            target=self._run, name=f"gitorch-watch:{self.path.name}", daemon=True
        )
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop watching and wait for the threads (a pending change is dropped)."""
        observer, worker = self._observer, self._worker
        self._observer = self._worker = None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=5)

    def __enter__(self) -> RepositoryWatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

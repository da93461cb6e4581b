"""RepositoryWatcher: a commit or an edited file calls back within a second, debounced."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sources_helpers import Checkout

from gitorch.sources.watch import RepositoryWatcher


class Calls:
    """Counts callbacks and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.count = 0
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> float:
        """Seconds it took for ``count`` calls; fails the test after ``timeout``."""
        started = time.monotonic()
        with self._cond:
            ok = self._cond.wait_for(lambda: self.count >= count, timeout)
        assert ok, f"expected {count} call(s) within {timeout}s, got {self.count}"
        return time.monotonic() - started


@pytest.fixture
def watched(checkout: Checkout) -> Iterator[tuple[Checkout, Calls]]:
    checkout.write("app/web.yaml", "v: 1\n")
    checkout.commit("one")
    calls = Calls()
    with RepositoryWatcher(checkout.path, calls, debounce=0.1):
        yield checkout, calls


def test_a_commit_calls_back_within_a_second(watched: tuple[Checkout, Calls]) -> None:
    checkout, calls = watched
    checkout.git("commit", "-q", "--allow-empty", "-m", "empty commit: only .git changes")
    assert calls.wait_for(1, timeout=1.0) < 1.0
    assert calls.threads and threading.current_thread().name not in calls.threads


def test_an_edited_file_calls_back_within_a_second(watched: tuple[Checkout, Calls]) -> None:
    checkout, calls = watched
    checkout.write("app/web.yaml", "v: 2\n")
    assert calls.wait_for(1, timeout=1.0) < 1.0


def test_a_burst_of_changes_gives_one_call(watched: tuple[Checkout, Calls]) -> None:
    checkout, calls = watched
    for i in range(10):
        checkout.write(f"app/s{i}.yaml", "x: 1\n")
    calls.wait_for(1, timeout=1.0)
    time.sleep(0.4)  # longer than the debounce: any second call would have come by now
    assert calls.count == 1


def test_swap_files_and_object_churn_are_ignored(watched: tuple[Checkout, Calls]) -> None:
    checkout, calls = watched
    checkout.write("app/.web.yaml.swp", "vim swap")
    checkout.write("app/web.yaml~", "backup")
    checkout.write("app/#web.yaml#", "emacs autosave")
    checkout.write("app/4913", "vim write probe")
    checkout.git("hash-object", "-w", "app/web.yaml~")  # writes under .git/objects only
    checkout.git("update-index", "--refresh")  # touches .git/index only
    time.sleep(0.4)  # four debounce periods: a call would have come by now
    assert calls.count == 0
    # And the watcher is still alive.
    checkout.write("app/web.yaml", "v: 3\n")
    calls.wait_for(1, timeout=1.0)


def test_a_failing_callback_does_not_stop_the_watcher(checkout: Checkout) -> None:
    calls = Calls()

    def flaky() -> None:
        calls()
        if calls.count == 1:
            raise RuntimeError("boom")

    with RepositoryWatcher(checkout.path, flaky, debounce=0.05):
        checkout.write("a.yaml", "a: 1\n")
        calls.wait_for(1, timeout=1.0)
        time.sleep(0.1)
        checkout.write("a.yaml", "a: 2\n")
        calls.wait_for(2, timeout=1.0)


def test_commits_only_ignores_the_working_tree_and_sees_commits(checkout: Checkout) -> None:
    """The daemon's watcher: it applies commits, so an edit must not wake it (with
    preemption, it would stop a pass for nothing); the commit that follows does."""
    checkout.write("app/web.yaml", "v: 1\n")
    checkout.commit("one")
    calls = Calls()
    with RepositoryWatcher(checkout.path, calls, debounce=0.05, commits_only=True):
        checkout.write("app/web.yaml", "v: 2\n")
        time.sleep(0.4)  # eight debounce periods: a call would have come by now
        assert calls.count == 0
        checkout.commit("two")
        assert calls.wait_for(1, timeout=1.0) < 1.0


def test_a_rename_read_in_two_halves_is_not_held_half_a_second() -> None:
    """Issue 20: watchdog's inotify reader sleeps out its whole pairing delay (0.5 s by
    default) once a rename's IN_MOVED_FROM is at the head of its queue, even when the
    IN_MOVED_TO pairs it a moment later: ``git commit``'s first rename (``index.lock``)
    held the whole commit, and a daemon saw it ~0.55 s late in some runs. The watcher
    shortens the delay (``MOVE_PAIRING_DELAY``); the halves are still paired."""
    grouper_module = pytest.importorskip("watchdog.observers.inotify_move_event_grouper")
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

    import gitorch.sources.watch as watch_module

    assert grouper_module.InotifyMoveEventGrouper.delay == watch_module.MOVE_PAIRING_DELAY
    grouper = grouper_module.InotifyMoveEventGrouper()
    got: list[tuple[object, float]] = []
    reader = threading.Thread(target=lambda: got.append((grouper.read_event(), time.monotonic())))
    reader.start()
    half = grouper_module.PathedInotifyEvent
    wd = WatchDescriptor(1)
    grouper.put_event(
        half(InotifyEvent(wd, InotifyConstants.IN_MOVED_FROM, 7, b"index.lock"), b"/r/index.lock")
    )
    time.sleep(0.01)  # the reader takes the first half alone
    put = time.monotonic()
    grouper.put_event(
        half(InotifyEvent(wd, InotifyConstants.IN_MOVED_TO, 7, b"index"), b"/r/index")
    )
    reader.join(timeout=2)
    grouper.close()
    event, when = got[0]
    assert isinstance(event, tuple), event  # still one rename
    assert when - put < 0.1, when - put


def test_a_commit_calls_back_at_its_ref_update_without_the_debounce(checkout: Checkout) -> None:
    """``at_ref_update``: git renames a branch's lock file into place once the commit is
    written, which ends the commit; the watcher does not wait out the debounce after it
    (here 2 s), and the commit's other writes (objects, index, logs) give no second call."""
    checkout.write("app/web.yaml", "v: 1\n")
    checkout.commit("one")
    calls = Calls()
    with RepositoryWatcher(
        checkout.path, calls, debounce=2.0, commits_only=True, at_ref_update=True
    ):
        checkout.write("app/web.yaml", "v: 2\n")
        checkout.commit("two")
        assert calls.wait_for(1, timeout=1.5) < 1.5
        time.sleep(2.5)  # past the debounce: a second call would have come by now
        assert calls.count == 1


def test_a_ref_written_in_place_still_waits_the_debounce(checkout: Checkout) -> None:
    """Only a lock file renamed onto its ref counts as complete: a ref written in place
    (not git's way, but possible) may be half written, so the debounce applies."""
    checkout.write("app/web.yaml", "v: 1\n")
    sha = checkout.commit("one")
    calls = Calls()
    with RepositoryWatcher(
        checkout.path, calls, debounce=0.6, commits_only=True, at_ref_update=True
    ):
        started = time.monotonic()
        (checkout.path / ".git" / "refs" / "heads" / "other").write_text(f"{sha}\n")
        calls.wait_for(1, timeout=3.0)
        assert time.monotonic() - started >= 0.55


def test_without_at_ref_update_a_commit_waits_the_debounce(checkout: Checkout) -> None:
    """``validate --watch --worktree`` reads the working tree, which a checkout writes
    after its ref: there a ref's update does not end the burst."""
    checkout.write("app/web.yaml", "v: 1\n")
    checkout.commit("one")
    calls = Calls()
    with RepositoryWatcher(checkout.path, calls, debounce=0.6):
        started = time.monotonic()
        checkout.git("commit", "-q", "--allow-empty", "-m", "two")
        calls.wait_for(1, timeout=3.0)
        assert time.monotonic() - started >= 0.55

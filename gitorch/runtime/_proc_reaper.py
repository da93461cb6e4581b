"""One thread that reaps every replica this Python process spawned.

Each child is watched through a pidfd (``pidfd_open(2)``, Linux >= 5.3) in one epoll set:
the pidfd turns readable when the child exits, the thread reaps exactly that child
(``Popen.wait``, never ``waitpid(-1)``, which would steal other code's children) and hands
the exit status to a callback. One thread for any number of replicas, and registering a
child costs two syscalls instead of starting a thread (which was ~0.7 ms of every
``create()`` on a busy 2-core machine). Where pidfds are missing it falls back to one
waiter thread per child.

Processes that are *not* our children (replicas adopted from an earlier daemon: the kernel
re-parented them) can be watched the same way, :meth:`Reaper.watch_pid`: a pidfd of any
process turns readable when it exits, so the daemon hears of an adopted replica's death at
once instead of at its next pass. Nothing is reaped for them (their new parent does that)
and their exit code cannot be known.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

ExitCallback = Callable[[int], None]
GoneCallback = Callable[[], None]


class Reaper:
    """Reaps watched children as soon as they exit and reports their ``returncode``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._watched: dict[int, GoneCallback] = {}

    def watch(self, popen: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
        """Call ``on_exit(returncode)`` from the reaper thread once ``popen`` has exited."""
        try:
            pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._watch_with_thread(popen, on_exit)
            return
        self._register(pidfd, lambda: _deliver(popen, on_exit))

    def watch_pid(self, pid: int, is_still_it: Callable[[], bool], on_gone: GoneCallback) -> bool:
        """Call ``on_gone()`` from the reaper thread once process ``pid`` (not a child)
        has exited. ``is_still_it`` is asked after the pidfd is open, so a pid recycled
        in between is never watched in its place. False when it cannot be watched (gone
        already, recycled, or no pidfds here): the caller's passes will see its end."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return False
        if not is_still_it():
            os.close(pidfd)
            return False
        self._register(pidfd, on_gone)
        return True

    def _register(self, pidfd: int, on_ready: GoneCallback) -> None:
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
                threading.Thread(target=self._run, name="gitorch-reaper", daemon=True).start()
            self._watched[pidfd] = on_ready
            # epoll_ctl on a set another thread is polling is safe: the new fd is seen at once.
            self._epoll.register(pidfd, select.EPOLLIN)

    def _run(self) -> None:
        assert self._epoll is not None
        while True:
            for pidfd, _events in self._epoll.poll():
                with self._lock:
                    on_ready = self._watched.pop(pidfd, None)
                    self._epoll.unregister(pidfd)
                os.close(pidfd)
                if on_ready is not None:
                    try:
                        on_ready()
                    except Exception:  # one bad callback must not stop the others
                        log.exception("a process exit callback failed")

    @staticmethod
    def _watch_with_thread(popen: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
        threading.Thread(
            target=_deliver, args=(popen, on_exit), name=f"gitorch-reap-{popen.pid}", daemon=True
        ).start()


def _deliver(popen: subprocess.Popen[bytes], on_exit: ExitCallback) -> None:
    code = popen.wait()  # the pidfd said it exited: this reaps without blocking
    try:
        on_exit(code)
    except Exception:  # one bad callback must not stop reaping the others
        log.exception("recording the exit of pid %s failed", popen.pid)


#: The process-wide reaper: children belong to the Python process, not to one runtime.
REAPER = Reaper()

"""``kill -QUIT PID`` prints every thread's stack to stderr and the process goes on.

How to see where a stuck daemon, watch or follower is without a debugger on the host
(as a JVM or a Go program does). The stacks are gathered by a Python signal handler on
the main thread, holding the GIL, from :func:`sys._current_frames`. ``faulthandler``'s
C-level dump, used before, walks the other threads' states without the GIL: a thread
that ended during the walk made ``gitorch validate --watch`` die of SIGSEGV under load.
The price: a main thread blocked inside C code for good answers only once it returns to
Python (``py-spy dump`` sees such a process).

The handler runs between two bytecodes of whatever the main thread was doing, so it must
never raise into it: a second SIGQUIT that lands while a dump is being made (the first
one still importing :mod:`traceback`, on a loaded host) is let go, the dump in progress
answers it; a dump that fails says so on stderr and the process goes on.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType


def print_stacks_on_sigquit() -> None:
    """Install the SIGQUIT handler (where the platform has SIGQUIT and a stderr)."""
    if hasattr(signal, "SIGQUIT") and sys.stderr is not None:
        signal.signal(signal.SIGQUIT, _print_every_threads_stack)


def every_threads_stack() -> str:
    """Each live thread's name and stack, most recent call last, the caller's first."""
    import traceback  # only when asked: commands start without it

    names = {thread.ident: thread.name for thread in threading.enumerate()}
    current = threading.get_ident()
    frames = sys._current_frames()
    ordered = sorted(frames.items(), key=lambda item: item[0] != current)
    parts: list[str] = []
    for ident, frame in ordered:
        which = "Current thread" if ident == current else "Thread"
        parts.append(f"{which} 0x{ident:016x} ({names.get(ident, 'unnamed')}):\n")
        parts.extend(traceback.format_stack(frame))
        parts.append("\n")
    return "".join(parts)


_dump_in_progress = False


def _print_every_threads_stack(signum: int, frame: FrameType | None) -> None:
    # Signal handlers only run on the main thread, so this flag needs no lock.
    global _dump_in_progress
    if _dump_in_progress:
        return
    _dump_in_progress = True
    try:
        try:
            text = every_threads_stack()
        except Exception as error:  # never into the code the signal interrupted
            text = f"gitorch: the stack dump failed: {error!r}\n"
        _write_to_stderr(text.encode("utf-8", "replace"))
    finally:
        _dump_in_progress = False


def _write_to_stderr(data: bytes) -> None:
    # os.write, not sys.stderr: the main thread may be in the middle of a buffered write
    # to stderr, and re-entering that buffer raises.
    while data:
        try:
            written = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return  # stderr closed: nothing to tell
        data = data[written:]

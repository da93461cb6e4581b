"""Stopping a command with Ctrl-C from a test, as a terminal would."""

from __future__ import annotations

import signal


def ctrl_c_reaches_it() -> None:
    """``preexec_fn`` of a command a test stops with SIGINT, as a terminal's Ctrl-C would.

    A suite started in the background (``cmd &`` in a script or a CI runner's shell) runs
    with SIGINT ignored; children inherit that, and Python then installs no
    KeyboardInterrupt handler, so the command would rightly ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

"""The SIGQUIT stack dump: every thread by name, the signalled process goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from gitorch.stack_dump import every_threads_stack


def test_every_thread_is_listed_by_name_with_its_stack() -> None:
    release = threading.Event()

    def parked_in_a_named_function() -> None:
        release.wait(30)

    thread = threading.Thread(target=parked_in_a_named_function, name="parked-helper")
    thread.start()
    try:
        dump = every_threads_stack()
    finally:
        release.set()
        thread.join()
    assert dump.startswith("Current thread 0x"), dump
    assert "(parked-helper):" in dump and "in parked_in_a_named_function" in dump, dump


def test_sigquit_storm_while_threads_come_and_go_neither_kills_nor_stops_the_process() -> None:
    # faulthandler's dump walked thread states without the GIL and crashed (SIGSEGV) when
    # a thread ended meanwhile: threads are started and ended here all along the storm.
    program = (
        "import threading, time, sys\n"
        "from gitorch.stack_dump import print_stacks_on_sigquit\n"
        "print_stacks_on_sigquit()\n"
        "print('ready', flush=True)\n"
        "end = time.monotonic() + 3\n"
        "while time.monotonic() < end:\n"
        "    ts = [threading.Thread(target=time.sleep, args=(0.001,)) for _ in range(8)]\n"
        "    [t.start() for t in ts]; [t.join() for t in ts]\n"
        "print('done', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    signals = 0
    while child.poll() is None and signals < 200:
        os.kill(child.pid, signal.SIGQUIT)
        signals += 1
        time.sleep(0.01)
    out, _ = child.communicate(timeout=30)
    assert (child.returncode, out) == (0, "done\n")
    assert signals >= 50

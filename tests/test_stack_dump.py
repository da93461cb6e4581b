"""The SIGQUIT stack dump: every thread by name, the signalled process goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gitorch import stack_dump
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


def test_sigquit_storm_while_threads_come_and_go_neither_kills_nor_stops_the_process(
    tmp_path: Path,
) -> None:
    # faulthandler's dump walked thread states without the GIL and crashed (SIGSEGV) when
    # a thread ended meanwhile: threads are started and ended here all along the storm.
    # The storm opens with a burst (signals 0.5 ms apart): a second SIGQUIT that landed
    # while the first dump still imported traceback ran the handler again, which met a
    # half-imported module, raised into the main thread and ended the process.
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
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        signals = 0
        while child.poll() is None and signals < 40:
            os.kill(child.pid, signal.SIGQUIT)
            signals += 1
            time.sleep(0.0005)
        while child.poll() is None and signals < 240:
            os.kill(child.pid, signal.SIGQUIT)
            signals += 1
            time.sleep(0.01)
        out, _ = child.communicate(timeout=30)
    dumps = errors.read_text()
    assert (child.returncode, out) == (0, "done\n"), dumps[-3000:]
    assert signals >= 90
    assert "Current thread 0x" in dumps and "Traceback" not in dumps, dumps[-3000:]


def test_a_dump_that_fails_is_reported_and_does_not_raise_into_the_interrupted_code(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def broken() -> str:
        raise AttributeError("partially initialized module 'traceback'")

    monkeypatch.setattr(stack_dump, "every_threads_stack", broken)
    stack_dump._print_every_threads_stack(signal.SIGQUIT, None)
    assert "the stack dump failed: AttributeError" in capfd.readouterr().err


def test_a_sigquit_during_a_dump_is_answered_by_that_dump(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def dump_interrupted_by_a_second_signal() -> str:
        calls.append(1)
        stack_dump._print_every_threads_stack(signal.SIGQUIT, None)
        return "the one dump\n"

    monkeypatch.setattr(stack_dump, "every_threads_stack", dump_interrupted_by_a_second_signal)
    stack_dump._print_every_threads_stack(signal.SIGQUIT, None)
    assert calls == [1]
    assert capfd.readouterr().err == "the one dump\n"

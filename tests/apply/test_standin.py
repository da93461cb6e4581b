"""The stand-in's own process handling (apply/standin.py), with real processes and pipes:
it acts once its daemon ends however it ends, leaves when told or when its runtime
directory goes, and a starting daemon stops only the stand-ins whose daemon is gone.
Following the table in a daemon's place is tested with real daemons and etcd in
tests/ha/test_every_host_serves.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from reconciler_helpers import wait_for

from gitorch.apply import standin
from gitorch.apply.standin import FOLDER, StandInOptions, start_stand_in, stop_stand_ins
from gitorch.processes import process_alive

UNREACHABLE_ETCD = "etcd://127.0.0.1:9/nobody"  # the discard port: nothing answers


def _stop() -> standin._Stop:
    stop = standin._Stop.__new__(standin._Stop)  # no signal handlers in the test process
    stop.event = threading.Event()
    stop.on_stop = []
    return stop


def _options(runtime: Path, name: str) -> StandInOptions:
    return StandInOptions(
        state_url=UNREACHABLE_ETCD,
        runtime_dir=runtime,
        place_host="here",
        place_runtime_dir=str(runtime),
        name=name,
        lb_host="127.0.0.1",
        secrets_dir=None,
        drain_timeout=1.0,
        ttl=5.0,
    )


def _running(pid: int) -> bool:
    return process_alive(pid)


def test_the_daemon_ends_when_its_end_of_the_pipe_closes(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    threading.Timer(0.3, os.close, (write_end,)).start()
    started = time.monotonic()
    assert standin.wait_for_the_daemon(read_end, os.getpid(), tmp_path, _stop())
    assert 0.25 < time.monotonic() - started < 3
    os.close(read_end)


def test_a_killed_daemon_not_reaped_yet_is_gone_too(tmp_path: Path) -> None:
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    read_end, write_end = os.pipe()  # held open here: only the pid says it ended
    try:
        os.kill(daemon.pid, signal.SIGKILL)
        time.sleep(0.2)  # a zombie now: not reaped until poll()
        assert Path(f"/proc/{daemon.pid}").exists()
        assert standin.wait_for_the_daemon(read_end, daemon.pid, tmp_path, _stop())
    finally:
        daemon.wait()
        os.close(read_end)
        os.close(write_end)


def test_a_waiting_stand_in_leaves_when_its_runtime_directory_goes_or_it_is_told(
    tmp_path: Path,
) -> None:
    read_end, write_end = os.pipe()
    gone = tmp_path / "removed"
    assert not standin.wait_for_the_daemon(read_end, os.getpid(), gone, _stop())
    told = _stop()
    threading.Timer(0.2, told.event.set).start()
    assert not standin.wait_for_the_daemon(read_end, os.getpid(), tmp_path, told)
    os.close(read_end)
    os.close(write_end)


def test_a_starting_daemon_stops_only_the_stand_ins_whose_daemon_is_gone(
    tmp_path: Path,
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    # This process's own stand-in: its daemon (here, the test) runs on.
    mine = start_stand_in(_options(runtime, "alive"))
    # A dead daemon's: it acts at once (its etcd does not answer: it keeps trying).
    dead = subprocess.Popen(["true"])
    dead.wait()
    options = _options(runtime, "gone")
    read_end, write_end = os.pipe()
    orphan = subprocess.Popen(
        options.argv(dead.pid, read_end),
        pass_fds=(read_end,),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    try:
        records = runtime / FOLDER
        wait_for(
            "both stand-ins recorded",
            lambda: {p.stem for p in records.glob("*.json")} == {"alive", "gone"},
            20,
        )
        started = time.monotonic()
        assert stop_stand_ins(runtime) == ["gone"]
        assert time.monotonic() - started < standin.STOP_TIMEOUT  # it left when told
        assert orphan.wait(5) == 0
        assert {p.stem for p in records.glob("*.json")} == {"alive"}
        assert mine.process.poll() is None
        pid = json.loads((records / "alive.json").read_text())["pid"]
        assert pid == mine.process.pid and _running(pid)
    finally:
        os.close(write_end)
        mine.process.kill()
        mine.release()
        mine.process.wait(5)
        orphan.kill()
        orphan.wait(5)

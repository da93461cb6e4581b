"""DockerRuntime.node_info against an engine address that accepts connections and never
answers (a host cut off mid-connection looks the same to the client): the check that
waited out its timeout is the answer for the next ``probe_timeout`` seconds, and callers
that come while a check is under way share it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gitorch.runtime.base import NodeInfo
from gitorch.runtime.docker import DockerRuntime

PROBE = 1.0


class SilentEngine:
    """A listener that accepts connections, counts them, and never answers on them: every
    request waits for an answer that never comes."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_engine() -> Iterator[SilentEngine]:
    engine = SilentEngine()
    yield engine
    engine.close()


def _timed(runtime: DockerRuntime) -> tuple[float, NodeInfo]:
    started = time.monotonic()
    info = runtime.node_info()
    return time.monotonic() - started, info


def test_a_silent_engine_is_waited_out_once_per_probe_timeout(
    silent_engine: SilentEngine,
) -> None:
    runtime = DockerRuntime("h2", silent_engine.endpoint, timeout=5.0, probe_timeout=PROBE)
    took, first = _timed(runtime)
    assert not first.ready and "timed out" in first.message, first.message
    assert PROBE * 0.9 <= took < PROBE * 2.5, took

    took, again = _timed(runtime)
    assert took < 0.1, f"the next check waited again ({took:.2f} s)"
    assert again == first

    time.sleep(PROBE)  # kept for probe_timeout: then the engine is asked again
    took, later = _timed(runtime)
    assert not later.ready and took >= PROBE * 0.9, took


def test_callers_during_a_check_share_it(silent_engine: SilentEngine) -> None:
    runtime = DockerRuntime("h2", silent_engine.endpoint, timeout=5.0, probe_timeout=PROBE)
    answers: list[tuple[float, NodeInfo]] = []
    started = time.monotonic()
    callers = [
        threading.Thread(target=lambda: answers.append((time.monotonic(), runtime.node_info())))
        for _ in range(4)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=10)
    assert len(answers) == 4 and not any(info.ready for _, info in answers)
    assert max(at for at, _ in answers) - started < PROBE * 2.5
    assert len(silent_engine.accepted) == 1, "one check asked the engine, for all four"


def test_a_refusal_is_not_kept() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    runtime = DockerRuntime("h2", f"tcp://127.0.0.1:{port}", timeout=5.0, probe_timeout=PROBE)
    assert not runtime.node_info().ready
    # An engine that starts on that port is seen at the next check, not a timeout later.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        took, info = _timed(runtime)
    assert "refused" not in info.message and took >= PROBE * 0.9, (took, info.message)

"""The byte channel of a Docker exec session (gitorch/runtime/docker.py ExecChannel): the
engine's multiplexed frames are taken apart (stdout for the caller, stderr kept for the
message when the session ends), reads wait at most their timeout, a longer one for the
first answer (the command is still starting). The real engine's exec sessions carry the
ingress's relay in tests/multihost; the framing is checked here on a socket pair."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from gitorch.runtime.docker import ExecChannel


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def test_stdout_is_reassembled_across_frames_and_stderr_kept_for_the_message() -> None:
    ours, engine = socket.socketpair()
    channel = ExecChannel(ours, 2.0, "h9")
    try:
        engine.sendall(frame(1, b"hel") + frame(2, b"warning: slow\n") + frame(1, b"lo world"))
        assert channel.receive(5) == b"hello"
        assert channel.receive(6) == b" world"
        channel.send(b"ping")
        assert engine.recv(4) == b"ping"
        engine.sendall(frame(2, b"Traceback...\nModuleNotFoundError: no gitorch\n"))
        engine.close()
        with pytest.raises(ConnectionError, match="node h9: the session ended: .*no gitorch"):
            channel.receive(1)
    finally:
        channel.close()


def test_the_first_answer_may_take_longer_than_the_next() -> None:
    ours, engine = socket.socketpair()
    channel = ExecChannel(ours, 0.2, "h9", first_timeout=2.0)
    try:
        started = time.monotonic()
        time.sleep(0.5)  # the command is starting: longer than the usual timeout
        engine.sendall(frame(1, b"ready"))
        assert channel.receive(5) == b"ready"
        assert time.monotonic() - started >= 0.5
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.receive(1)  # now the usual timeout holds
        assert time.monotonic() - started < 1.5
    finally:
        channel.close()
        engine.close()

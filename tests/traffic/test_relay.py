"""The control channel of a remote host's ingress (gitorch/traffic/proxy/remote.py): a
relay (``python -m gitorch.traffic.proxy relay``) carries requests from its stdin to a
real ``gitorch proxy``'s control socket and the answers back; :class:`RemoteProxyPlane`
drives a proxy through it, says when no proxy answers behind it, and names its node when
the channel breaks. On the rig, the relay runs in the ingress container through the
engine's exec API (tests/multihost); here its stdin and stdout are plain pipes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from listen_ports import free_port
from traffic_helpers import Apps, get, route, table, wait_until

from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call
from gitorch.traffic.proxy.remote import ProxyNotServing, RemoteProxyPlane
from gitorch.traffic.table import Fence

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


class PipeChannel:
    """A relay subprocess's stdin and stdout as a byte channel."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gitorch.traffic.proxy", "relay", "--state", str(state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
        )

    #: Seconds each write waits before it reaches the relay (a link that holds it).
    delay = 0.0
    #: Seconds the daemon waits for an answer: a request later than this is refused.
    timeout = 5.0

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        time.sleep(self.delay)
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def receive(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        data = self.proc.stdout.read(size)
        if len(data) < size:
            raise ConnectionError("the relay ended")
        return data

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(10)


def _health(state: Path) -> dict[str, Any]:
    """The proxy's own answer to ``health`` (routes, fenced), asked on its socket."""
    return call(ProxyPaths.of(state).socket, {"op": "health"}, 5.0)


@pytest.fixture
def proxy_state(tmp_path: Path) -> Iterator[Path]:
    """A real ``gitorch proxy`` (one worker) serving ``tmp_path/state``."""
    state = tmp_path / "state"
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gitorch.traffic.proxy", "run", "--state", str(state),
         "--workers", "1", "--log-level", "warning"],
        env=ENV,
    )  # fmt: skip
    try:
        wait_until(lambda: ProxyPaths.of(state).socket.exists(), 30, "the proxy's socket")
        yield state
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_table_applied_through_the_relay_serves(proxy_state: Path, apps: Apps) -> None:
    channels: list[PipeChannel] = []

    def open_channel() -> PipeChannel:
        channels.append(PipeChannel(proxy_state))
        return channels[-1]

    app = apps.start()
    plane = RemoteProxyPlane("h9", open_channel)
    try:
        port = free_port()
        plane.apply(table(route(port, [app.backend])))
        status, body, _ = get(port)
        assert status == 200 and app.id.encode() in body, body
        assert plane.health().ok
        health = _health(proxy_state)
        assert health["routes"] == 1, health
        # One relay session carries every request.
        plane.figures("svc")
        assert len(channels) == 1
    finally:
        plane.close()


def test_no_proxy_behind_the_relay_and_a_broken_channel_say_so(tmp_path: Path) -> None:
    opened: list[PipeChannel] = []

    def open_channel() -> PipeChannel:
        opened.append(PipeChannel(tmp_path / "nothing-serves-here"))
        return opened[-1]

    plane = RemoteProxyPlane("h9", open_channel, pause=0.5)
    try:
        # The relay answers, but no proxy: an ingress still starting.
        with pytest.raises(ProxyNotServing, match="node h9: ingress"):
            plane.apply(table())
        # The relay dies under the channel: the failure names the node; for the pause
        # callers fail at once (no new session), then a new relay is started.
        opened[-1].proc.kill()
        opened[-1].proc.wait(10)
        with pytest.raises(ProxyUnavailable, match="node h9: the ingress did not answer 'apply'"):
            plane.apply(table())
        sessions = len(opened)
        with pytest.raises(ProxyUnavailable, match="node h9"):
            plane.apply(table())
        assert len(opened) == sessions, "no new session during the pause"
        wait_until(lambda: _fails_behind_a_new_relay(plane), 5, "a new relay after the pause")
        assert len(opened) == sessions + 1
    finally:
        plane.close()


def _fails_behind_a_new_relay(plane: RemoteProxyPlane) -> bool:
    try:
        plane.apply(table())
    except ProxyNotServing:
        return True  # the new relay answered (no proxy behind it)
    except ProxyUnavailable:
        return False  # still paused
    return False


def _answered_by(port: int, count: int) -> set[str]:
    seen: set[str] = set()
    for _ in range(count):
        status, body, _ = get(port)
        assert status == 200, (status, body)
        seen.add(body.decode(errors="replace"))
    return seen


def test_a_fenced_ingress_withdraws_its_own_replicas_when_the_daemon_falls_silent(
    proxy_state: Path, apps: Apps
) -> None:
    """A host cut off past its grace has its replicas replaced elsewhere: its ingress must
    not send them requests when the link returns (tests/multihost/test_partition.py shows
    it on the rig); a route that only this host serves keeps being served."""
    own, other, alone = apps.start(), apps.start(), apps.start()
    shared_port, alone_port = free_port(), free_port()
    fence = Fence(2.0, frozenset({own.id, alone.id}))
    plane = RemoteProxyPlane("h2", lambda: PipeChannel(proxy_state))

    try:
        fenced_table = replace(
            table(
                route(shared_port, [own.backend, other.backend]),
                route(alone_port, [alone.backend], service="alone"),
            ),
            fence=fence,
        )
        plane.apply(fenced_table)
        both = _answered_by(shared_port, 4)  # round robin: two would do, inside the fence
        assert any(own.id in b for b in both) and any(other.id in b for b in both), both
        assert not _health(proxy_state)["fenced"]
        # No table for longer than the fence: only the other host's replica answers.
        wait_until(lambda: bool(_health(proxy_state)["fenced"]), 10, "the fence")
        after = _answered_by(shared_port, 20)
        assert all(other.id in b for b in after), after
        assert all(alone.id in b for b in _answered_by(alone_port, 5)), "served alone: kept"
        # The daemon speaks again: its table is served as it is.
        plane.apply(fenced_table)
        assert not _health(proxy_state)["fenced"]
        again = _answered_by(shared_port, 4)
        assert any(own.id in b for b in again), again
    finally:
        plane.close()


def test_a_request_that_reaches_the_relay_after_the_daemon_gave_up_is_refused(
    proxy_state: Path, apps: Apps
) -> None:
    """A table held by a cut link and delivered when it comes back (on the rig:
    tests/multihost/test_partition.py) is old news: the relay refuses it, the proxy keeps
    its table, and the next session is served as before."""
    channels: list[PipeChannel] = []

    def open_channel() -> PipeChannel:
        channels.append(PipeChannel(proxy_state))
        return channels[-1]

    app = apps.start()
    port, late_port = free_port(), free_port()
    plane = RemoteProxyPlane("h2", open_channel, pause=0.2)

    try:
        plane.apply(table(route(port, [app.backend])))
        assert _health(proxy_state)["routes"] == 1
        channels[-1].timeout, channels[-1].delay = 1.0, 1.5  # later than it waits
        late = table(route(port, [app.backend]), route(late_port, [app.backend], service="b"))
        with pytest.raises(ProxyUnavailable, match=r"node h2: .*'apply'.* came 0\.\d s after"):
            plane.apply(late)
        assert _health(proxy_state)["routes"] == 1, "the late table was applied"
        assert get(port)[0] == 200
        time.sleep(0.3)  # the pause after a broken session
        plane.apply(late)  # a new session, in time: applied
        assert len(channels) == 2 and _health(proxy_state)["routes"] == 2
        assert get(late_port)[0] == 200
    finally:
        plane.close()

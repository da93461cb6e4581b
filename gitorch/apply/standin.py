"""A stand-in that keeps a host's proxy on the leader's routing table while the host's
daemon is gone.

With etcd state every daemon's host serves the leader's table: a standby's thread
follows it (:mod:`gitorch.apply.followers`). The proxy outlives its daemon, so a daemon
killed, crashed or stopped used to leave its host's proxy on its last table, and the
leader's next rollout stopped replicas that proxy still sent requests to (after a whole
rollout, none of its backends was left). So each following daemon starts a stand-in, a
small detached process (``python -m gitorch.apply.standin``) that does nothing until the
daemon ends, however it ends (a pipe the daemon holds open reads end-of-file), then:

* lets go of the daemon's member record (its lease revoked, when the record names this
  host and the dead process): a killed leader is replaced at a standby's next campaign
  (half a second) instead of when its lease expires;
* exits when another daemon of the same place (host and runtime directory) still runs:
  it serves that proxy itself;
* otherwise holds a member record of its own (``NAME.stand-in``, role ``stand-in``: a
  lease, never a campaign) and follows the table as a daemon does, with the same
  :class:`~gitorch.apply.followers.TableFollower` (apply, drain, acknowledge), so the
  leader's drain waits for this host as it did for its daemon;
* exits when there is no proxy left to keep (``gitorch proxy stop``, its runtime
  directory removed).

A daemon starting at a place stops the stand-ins there whose daemon is gone (SIGTERM: the
stand-in revokes its lease and exits) before it campaigns, so the two never apply tables
to one proxy at once. Only the built-in proxy has a stand-in (HAProxy keeps its last
table, as before).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imported by the waiting stand-in, not once its daemon is gone: 0.6 s of CPU, more on a
# loaded host, which would delay the takeover (35 MB resident instead of 16).
from gitorch.apply.followers import TableFollower
from gitorch.errors import GitorchError
from gitorch.processes import process_alive
from gitorch.state.etcd.backend import EtcdBackend, load
from gitorch.state.etcd.election import STANDS_IN_FIELD, Leadership, let_go_of_member
from gitorch.state.etcd.tables import FOLLOWS_FIELD, Place
from gitorch.state.location import parse_location
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyUnavailable

log = logging.getLogger("gitorch.standin")

#: The folder of the runtime directory where stand-ins say who they are (NAME.json).
FOLDER = "stand-ins"
#: Seconds between a waiting stand-in's looks at its daemon's process (beside the pipe).
DAEMON_POLL = 0.5
#: Seconds between an acting stand-in's checks for a daemon back at its place and for its
#: proxy; after this many failed checks in a row of the proxy, the stand-in leaves.
CHECK_EVERY = 2.0
PROXY_MISSES = 3
#: Seconds between an acting stand-in's tries while etcd fails.
RETRY_AFTER_FAILURE = 1.0
#: Seconds a stand-in tries to reach etcd when its daemon has gone, before it gives up.
TAKE_OVER_PATIENCE = 60.0
#: Seconds a starting daemon waits for a stand-in to leave before it kills it.
STOP_TIMEOUT = 5.0
MODULE = "gitorch.apply.standin"


@dataclass(frozen=True)
class StandInOptions:
    """What a stand-in needs of its daemon."""

    state_url: str  # the etcd location, certificate paths included
    runtime_dir: Path  # the daemon's runtime directory: its proxy's
    place_host: str  # the daemon's member record's "host" and "runtimeDir"
    place_runtime_dir: str
    name: str  # the daemon's name
    lb_host: str
    secrets_dir: Path | None
    drain_timeout: float
    ttl: float

    def argv(self, daemon_pid: int, watch_fd: int) -> list[str]:
        """The stand-in's command line."""
        argv = [
            sys.executable,
            "-m",
            MODULE,
            "--state",
            self.state_url,
            "--runtime-dir",
            str(self.runtime_dir),
            "--place",
            self.place_host,
            self.place_runtime_dir,
            "--name",
            self.name,
            "--lb-host",
            self.lb_host,
            "--drain-timeout",
            f"{self.drain_timeout:g}",
            "--lease-ttl",
            f"{self.ttl:g}",
            "--daemon-pid",
            str(daemon_pid),
            "--watch-fd",
            str(watch_fd),
        ]
        if self.secrets_dir is not None:
            argv += ["--secrets-dir", str(self.secrets_dir)]
        return argv


@dataclass
class StandIn:
    """A started stand-in, from its daemon's side: the daemon holds ``watch`` open for
    as long as it lives (the stand-in acts once it closes)."""

    process: subprocess.Popen[bytes]
    watch: int

    def release(self) -> None:
        """The daemon ends: the stand-in takes over."""
        with contextlib.suppress(OSError):
            os.close(self.watch)
        self.process.poll()  # reaped when it already left (a stopped proxy)


def start_stand_in(options: StandInOptions) -> StandIn:
    """Start this daemon's stand-in (detached: it outlives the daemon)."""
    folder = options.runtime_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        with open(folder / f"{_file_name(options.name)}.log", "ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                options.argv(os.getpid(), read_end),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(read_end,),
                start_new_session=True,
            )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return StandIn(process, write_end)


def stop_stand_ins(runtime_dir: Path, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop the stand-ins of ``runtime_dir`` whose daemon is gone (a daemon starting
    there serves its proxy itself); the names of the daemons they stood in for."""
    stopped: list[str] = []
    for record in sorted((runtime_dir / FOLDER).glob("*.json")):
        try:
            data = json.loads(record.read_text())
            pid, daemon_pid, name = int(data["pid"]), int(data["daemonPid"]), str(data["name"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if process_alive(daemon_pid):
            continue  # its daemon still runs (another daemon of this place)
        if _is_stand_in(pid):
            _terminate(pid, timeout)
            stopped.append(name)
        record.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(pid):
        log.warning("stand-in %s did not leave within %.0f s: killed", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_stand_in(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in argv


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -- the stand-in's process ---------------------------------------------------------------


class _Stop:
    """SIGTERM (a daemon back at this place, `gitorch proxy stop`'s clean-up): leave."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.on_stop: list[Any] = []
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.event.set()
        for hook in self.on_stop:
            hook()


def wait_for_the_daemon(watch_fd: int, daemon_pid: int, runtime_dir: Path, stop: _Stop) -> bool:
    """Until the daemon ends (its end of the pipe closes, or its process is gone): True;
    False when the stand-in should leave first (stopped, its runtime directory gone)."""
    while not stop.event.is_set():
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select([watch_fd], [], [], DAEMON_POLL)
            if readable and not os.read(watch_fd, 1):
                return True
        if not process_alive(daemon_pid):
            return True
        if not runtime_dir.is_dir():
            return False
    return False


def stand_in(args: argparse.Namespace, stop: _Stop) -> int:
    """Keep this host's proxy on the leader's table until a daemon is back (the module
    docstring); the exit status."""
    location = parse_location(args.state)
    assert location.etcd is not None
    place = Place(*args.place)
    name = f"{args.name}.stand-in"

    def another_daemon_here() -> str | None:
        found, _ = backend.client.range(backend.full("members/"), prefix=True)
        for kv in found:
            member = load(kv.value)
            if (
                isinstance(member, dict)
                and member.get("name") not in (args.name, name)
                and not member.get(STANDS_IN_FIELD)
                and member.get(FOLLOWS_FIELD)
                and Place.of(member) == place
            ):
                return str(member.get("name"))
        return None

    give_up_at = time.monotonic() + TAKE_OVER_PATIENCE
    while True:
        try:
            backend = EtcdBackend(location.etcd)
            if let_go_of_member(backend, args.name, args.daemon_pid):
                log.info("daemon %s is gone: its lease revoked", args.name)
            other = another_daemon_here()
            if other is not None:
                log.info("daemon %s serves this host's proxy: nothing to stand in for", other)
                return 0
            plane = ProxyDataPlane(
                args.runtime_dir, host=args.lb_host, secrets_dir=args.secrets_dir, start=False
            )
            break
        except ProxyUnavailable as exc:
            log.info("no proxy to keep here: %s", exc.message)
            return 0
        except GitorchError as exc:  # etcd not answering: tried again a while
            if stop.event.wait(1.0):
                return 0
            if time.monotonic() >= give_up_at:
                log.error("cannot stand in for daemon %s: %s", args.name, exc.message)
                return 1
    leadership = Leadership(
        backend,
        name,
        ttl=args.lease_ttl,
        info={
            "host": place.host,
            "runtimeDir": place.runtime_dir,
            FOLLOWS_FIELD: True,
            STANDS_IN_FIELD: args.name,
        },
        campaign=False,
    )
    follower = TableFollower(
        backend,
        leadership,
        place,
        lambda: plane,
        threading.Lock(),
        drain_timeout=args.drain_timeout,
    )
    stop.on_stop.append(follower.stop)
    try:
        leadership.start()
    except GitorchError as exc:
        log.error("cannot stand in for daemon %s: %s", args.name, exc.message)
        return 1
    log.info("standing in for daemon %s: this host's proxy follows the leader's table", args.name)
    try:
        misses, checked, failed = 0, 0.0, None
        while not stop.event.is_set():
            follower.wait_for_a_table()
            if stop.event.is_set():
                break
            if time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                try:
                    other = another_daemon_here()
                except GitorchError:
                    other = None  # etcd failing: the follower says so
                if other is not None:
                    log.info("daemon %s serves this host's proxy again: leaving", other)
                    break
                misses = 0 if plane.health().ok else misses + 1
                if misses >= PROXY_MISSES or not args.runtime_dir.is_dir():
                    log.info("this host's proxy is gone: nothing left to keep")
                    break
            try:
                follower.step()
                failed = None
            except GitorchError as exc:  # etcd failing: said once, tried again each second
                if exc.message != failed:
                    log.warning("the leader's routing table was not followed: %s", exc.message)
                failed = exc.message
                stop.event.wait(RETRY_AFTER_FAILURE)
    finally:
        leadership.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--state", required=True)
    parser.add_argument("--runtime-dir", type=Path, required=True)
    parser.add_argument("--place", nargs=2, required=True, metavar=("HOST", "RUNTIME_DIR"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--lb-host", default="127.0.0.1")
    parser.add_argument("--secrets-dir", type=Path)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--daemon-pid", type=int, required=True)
    parser.add_argument("--watch-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s stand-in for {args.name} [%(process)d] %(levelname)s %(message)s",
    )
    stop = _Stop()
    record = args.runtime_dir / FOLDER / f"{_file_name(args.name)}.json"
    record.write_text(
        json.dumps({"pid": os.getpid(), "daemonPid": args.daemon_pid, "name": args.name})
    )
    try:
        if not wait_for_the_daemon(args.watch_fd, args.daemon_pid, args.runtime_dir, stop):
            return 0
        return stand_in(args, stop)
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("pid") == os.getpid():
                record.unlink()


if __name__ == "__main__":
    sys.exit(main())

"""The HAProxy master process: started, found again, reloaded, stopped.

HAProxy runs in master-worker mode (``haproxy -W -S master.sock -p haproxy.pid``) in a
session of its own, so it outlives whoever started it: a daemon that restarts finds the
running master by its pid file and master socket (:meth:`HAProxyMaster.adopt`) instead of
starting another. A configuration is checked with ``haproxy -c`` before use (an invalid
one never replaces a running one); a reload goes through the master socket, and the new
worker takes the listening sockets over (``expose-fd listeners``) while the old one
finishes its connections.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from gitorch.processes import process_alive
from gitorch.traffic.haproxy.errors import HAProxyConfigInvalid, HAProxyError, HAProxyReloadFailed
from gitorch.traffic.haproxy.runtime_api import cli
from gitorch.traffic.holders import read_pid
from gitorch.traffic.unix_paths import HAPROXY_MAX, fitting, make_room, release


class HAProxyMaster:
    """One HAProxy master and its workers, in ``workdir``."""

    def __init__(self, workdir: Path, *, haproxy: str = "haproxy", timeout: float = 10.0) -> None:
        self.workdir = workdir
        self.haproxy = haproxy
        self.timeout = timeout
        self.config_path = workdir / "haproxy.cfg"
        self.admin_sock = fitting(workdir / "admin.sock", HAPROXY_MAX)
        self.master_sock = fitting(workdir / "master.sock", HAPROXY_MAX)
        self.pid_path = workdir / "haproxy.pid"
        self.log_path = workdir / "haproxy.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None  # when this process started it

    # ------------------------------------------------------------------ lifecycle

    def running(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        return process_alive(self.pid)

    def adopt(self) -> bool:
        """Take over a master that runs from this working directory (True), if any."""
        pid = read_pid(self.pid_path)
        if pid is None or not process_alive(pid):
            return False
        try:
            self.show_proc()
        except HAProxyError:
            return False
        self.pid = pid
        return True

    def validate(self, path: Path) -> None:
        """``haproxy -c`` on ``path``; :class:`HAProxyConfigInvalid` with its message."""
        try:
            done = subprocess.run(  # noqa: S603 (argument list, our own haproxy path)
                [self.haproxy, "-c", "-f", str(path)],
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except FileNotFoundError as exc:
            raise HAProxyError(f"haproxy is not installed ({self.haproxy!r} not found)") from exc
        except subprocess.TimeoutExpired as exc:
            raise HAProxyError("haproxy -c did not finish") from exc
        if done.returncode != 0:
            lines = [
                line.strip()
                for line in (done.stderr + done.stdout).splitlines()
                if "ALERT" in line or "error" in line.lower()
            ] or [(done.stderr or done.stdout).strip()]
            raise HAProxyConfigInvalid(
                f"haproxy refused the new configuration: {lines[0]}", detail=tuple(lines[1:])
            )

    def start(self) -> None:
        """Start a master on :attr:`config_path` and wait until its worker answers."""
        for sock in (self.admin_sock, self.master_sock):
            sock.unlink(missing_ok=True)
            make_room(sock)
        self.pid_path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        try:
            proc = subprocess.Popen(  # noqa: S603 (argument list)
                [
                    self.haproxy,
                    "-W",
                    "-S",
                    str(self.master_sock),
                    "-p",
                    str(self.pid_path),
                    "-f",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives its starter; stop() signals the group
            )
        except FileNotFoundError as exc:
            raise HAProxyError(f"haproxy is not installed ({self.haproxy!r} not found)") from exc
        finally:
            log.close()
        self._proc, self.pid = proc, proc.pid
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                # Its own words first: the daemon's log shows the message line only.
                said = self.log_tail(log_start)
                raise HAProxyError(
                    f"haproxy exited with {proc.returncode} at start"
                    + (f": {said[0].split(' : ', 1)[-1]}" if said else ""),
                    detail=said[1:],
                )
            try:
                cli(self.admin_sock, "show info", self.timeout)
                return
            except HAProxyError:
                time.sleep(0.02)
        self.stop()
        raise HAProxyError("haproxy did not answer on its admin socket", detail=self.log_tail())

    def reload(self) -> None:
        """Reload the configuration file; returns once the new worker serves.
        :class:`HAProxyReloadFailed` when it could not (the old one keeps serving)."""
        before = self._show_proc_once_up()
        log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        cli(self.master_sock, "reload", self.timeout)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                now = self.show_proc()
            except HAProxyError:
                continue  # the master re-executes itself: its socket is briefly gone
            if now[0] <= before[0]:
                continue
            if now[1] > before[1]:
                raise HAProxyReloadFailed(
                    "haproxy could not load the new configuration; the previous one keeps serving",
                    detail=self.log_tail(log_size),
                )
            try:
                pid = int(
                    re.findall(
                        r"^Pid: (\d+)$", cli(self.admin_sock, "show info", self.timeout), re.M
                    )[0]
                )
            except (HAProxyError, IndexError):
                continue
            if pid == now[2]:
                return
        raise HAProxyReloadFailed("haproxy did not finish reloading", detail=self.log_tail())

    def stop(self) -> None:
        """Stop the master and its workers (connections in flight are cut)."""
        pid, proc = self.pid, self._proc
        self.pid, self._proc = None, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    break
            elif not process_alive(pid):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(self.timeout)
        self.pid_path.unlink(missing_ok=True)
        for sock in (self.admin_sock, self.master_sock):
            sock.unlink(missing_ok=True)
            release(sock)

    # ------------------------------------------------------------------ reading

    def _show_proc_once_up(self) -> tuple[int, int, int]:
        """``show_proc``, waiting out a master that is still re-executing itself after the
        previous reload (its socket refuses connections for a moment, longer under load)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.show_proc()
            except HAProxyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def show_proc(self) -> tuple[int, int, int]:
        """(master reloads, failed reloads, current worker pid) from the master CLI."""
        text = cli(self.master_sock, "show proc", self.timeout)
        master = re.search(r"master\s+(\d+) \[failed: (\d+)\]", text)
        worker = re.search(r"# workers\n(\d+)\s+worker", text)
        if master is None or worker is None:
            raise HAProxyError(f"unexpected 'show proc' answer: {text[:200]!r}")
        return int(master.group(1)), int(master.group(2)), int(worker.group(1))

    def log_tail(self, offset: int = 0) -> tuple[str, ...]:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ()
        alerts = [line for line in text.splitlines() if "ALERT" in line]
        return tuple((alerts or text.splitlines())[-10:])

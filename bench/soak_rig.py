"""The soak's world: a folder with a small filesystem for the state directory, a bare Git
remote the daemon fetches, the daemon under a supervisor, the data plane's processes,
decoy processes gitorch must never touch, and the cleanup that undoes all of it.

Nothing here decides anything: :mod:`soak` drives these parts from its plan, and
:mod:`soak_checks` reads them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "rigs"):  # gitorch itself, and the rigs the tests share
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from listen_ports import free_port  # noqa: E402
from replica_procs import (  # noqa: E402
    alive,
    cmdline_of,
    read_proc,
)

#: The state directory's filesystem (tmpfs): room for the store and every replica's
#: output for a long soak, small enough to fill at once for the full-disk fault.
STATE_FS_SIZE = "256m"


# -- the journal ---------------------------------------------------------------------------


class Journal:
    """Everything the soak did and saw, with the moment (seconds since the start), as
    JSON lines in ``path`` and in memory for the report."""

    def __init__(self, path: Path) -> None:
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self.entries: list[dict[str, Any]] = []

    def now(self) -> float:
        return time.monotonic() - self.started

    def at(self, monotonic: float) -> float:
        return monotonic - self.started

    def wall(self, t: float) -> str:
        stamp = time.gmtime(self.wall_started + t)
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)

    def note(self, kind: str, text: str, **data: Any) -> dict[str, Any]:
        entry = {"t": round(self.now(), 3), "kind": kind, "text": text, **data}
        with self._lock:
            self.entries.append(entry)
            self._file.write(json.dumps(entry, default=str) + "\n")
            self._file.flush()
        return entry

    def before(self, t: float, count: int = 6, kinds: tuple[str, ...] = ()) -> list[str]:
        """The last ``count`` actions at or before ``t`` (for a break's context)."""
        with self._lock:
            chosen = [
                e for e in self.entries if e["t"] <= t + 0.001 and (not kinds or e["kind"] in kinds)
            ]
        return [f"t={e['t']:.1f}s {e['kind']}: {e['text']}" for e in chosen[-count:]]

    def close(self) -> None:
        with self._lock:
            self._file.close()


# -- the folder and its filesystem --------------------------------------------------------


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


@dataclass
class World:
    """The soak's folder: ``state`` (a tmpfs), ``logs``, the Git remote and work tree."""

    root: Path
    state: Path = field(init=False)
    logs: Path = field(init=False)
    remote: Path = field(init=False)
    work: Path = field(init=False)
    mounted: bool = False

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.logs = self.root / "logs"
        self.remote = self.root / "remote.git"
        self.work = self.root / "work"

    @classmethod
    def make(cls, parent: Path | None = None) -> World:
        root = Path(tempfile.mkdtemp(prefix="gitorch-soak-", dir=parent))
        world = cls(root)
        world.logs.mkdir()
        world.state.mkdir()
        return world

    def mount_state(self) -> None:
        """A tmpfs of :data:`STATE_FS_SIZE` on the state directory (root only)."""
        done = _run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={STATE_FS_SIZE},mode=0755",
                "tmpfs",
                str(self.state),
            ]
        )
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs on {self.state}: {done.stderr.strip()}")
        self.mounted = True

    def unmount_state(self) -> None:
        if not self.mounted:
            return
        done = _run(["umount", str(self.state)])
        if done.returncode != 0:
            _run(["umount", "-l", str(self.state)])  # busy: detach now, freed when unused
        self.mounted = False

    def state_free_bytes(self) -> int:
        stat = os.statvfs(self.state)
        return stat.f_bavail * stat.f_frsize


# -- Git -----------------------------------------------------------------------------------

AUTHOR = ("Soak Bot", "soak@example.com")


def git(cwd: Path, *args: str, check: bool = True) -> str:
    done = _run(
        ["git", "-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}", *args],
        cwd=cwd,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class GitRemote:
    """A bare remote the daemon fetches (``file://``), and a work tree the soak commits
    in. The remote can be moved away (unreachable) and back; pushes made meanwhile wait."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.away = world.root / "remote.git.away"
        self._lock = threading.Lock()
        self.unpushed = False

    @property
    def url(self) -> str:
        return f"file://{self.world.remote}"

    def init(self) -> None:
        git(self.world.root, "init", "-q", "--bare", "-b", "main", str(self.world.remote))
        git(self.world.root, "init", "-q", "-b", "main", str(self.world.work))
        git(self.world.work, "remote", "add", "origin", str(self.world.remote))

    def commit(self, files: dict[str, str | None], message: str) -> str:
        with self._lock:
            work = self.world.work
            for path, text in files.items():
                target = work / path
                if text is None:
                    target.unlink(missing_ok=True)
                else:
                    target.write_text(text, encoding="utf-8")
            git(work, "add", "-A")
            git(work, "commit", "-q", "--allow-empty", "-m", message)
            self.unpushed = True
            return git(work, "rev-parse", "HEAD")

    def revert(self) -> str:
        with self._lock:
            git(self.world.work, "revert", "--no-edit", "HEAD")
            self.unpushed = True
            return git(self.world.work, "rev-parse", "HEAD")

    def files_at(self, sha: str) -> dict[str, str]:
        names = git(self.world.work, "ls-tree", "--name-only", sha).split()
        return {n: git(self.world.work, "show", f"{sha}:{n}") + "\n" for n in names}

    def push(self) -> bool:
        """Push what is unpushed; False while the remote is away (it stays unpushed)."""
        with self._lock:
            if not self.unpushed:
                return True
            done = _run(["git", "push", "-q", "origin", "main"], cwd=self.world.work)
            if done.returncode == 0:
                self.unpushed = False
                return True
            return False

    def make_unreachable(self) -> None:
        with self._lock:
            os.rename(self.world.remote, self.away)

    def make_reachable(self) -> None:
        with self._lock:
            if self.away.exists():
                os.rename(self.away, self.world.remote)

    @property
    def reachable(self) -> bool:
        return self.world.remote.exists()


# -- /proc ---------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(p) for p in (task / "children").read_text().split()]
    return kids


def processes_naming(marker: str, words: tuple[str, ...]) -> list[int]:
    """Live processes whose command line holds ``marker`` and one of ``words``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = cmdline_of(int(entry.name))
        named = any(marker in a for a in argv) and any(w in argv for w in words)
        if named and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# -- the daemon ----------------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    for name in ("GITORCH_STATE", "GITORCH_DEBUG"):
        env.pop(name, None)
    env.update(extra or {})
    return env


class Daemon:
    """``gitorch daemon`` under a supervisor of the soak's own (as systemd would run it):
    started, killed, stopped and continued on request, and started again after a kill."""

    def __init__(
        self,
        world: World,
        argv_tail: list[str],
        journal: Journal,
        env: dict[str, str],
        state: list[str] | None = None,
        revision: Callable[[], str | None] | None = None,
    ) -> None:
        """``state``: the daemon's ``--state`` options (default: the world's folder);
        ``revision``: where the applied commit is read (default: ``daemon.json``)."""
        self.revision = revision
        self.world = world
        self.port = free_port()
        self.argv = [
            sys.executable,
            "-m",
            "gitorch",
            "daemon",
            *(state or ["--state", str(world.state)]),
            "--listen",
            f"127.0.0.1:{self.port}",
            *argv_tail,
        ]
        self.journal = journal
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False
        self.expect_exit = False
        self._log = (world.logs / "daemon.log").open("ab")
        self._starting = threading.Lock()

    def start(self) -> None:
        """Start the daemon unless it runs (the fault that killed it and the checks, as
        its supervisor, may both start it: one does). The killed one stays expected to
        have exited until the new one is there, so the checks never see it as a crash."""
        with self._starting:
            if self.running():
                return
            self.proc = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=child_env(self.env),
                cwd=self.world.root,
                start_new_session=True,
            )
            self.expect_exit = False
            self.paused = False
        self.starts += 1
        self.journal.note("daemon", f"daemon started (pid {self.proc.pid})", pid=self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def kill(self) -> None:
        self.expect_exit = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """SIGTERM (the clean stop), then SIGKILL after 20 s."""
        self.expect_exit = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def api(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The daemon's ``/api/v1/status`` (None when it does not answer)."""
        if self.paused or not self.running():
            return None
        try:
            code, data = self.api("GET", "/api/v1/status", timeout)
        except (OSError, http.client.HTTPException):
            return None
        return data if code == 200 and isinstance(data, dict) else None

    def applied_revision(self) -> str | None:
        """The commit the daemon applies (``<state>/daemon.json``), read from the file so
        that it is known while the daemon is stopped."""
        if self.revision is not None:
            return self.revision()
        try:
            data = json.loads((self.world.state / "daemon.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        revision = data.get("revision")
        return revision if isinstance(revision, str) else None

    def close(self) -> None:
        self._log.close()


# -- the data plane ------------------------------------------------------------------------


class DataPlane:
    """The ``gitorch proxy`` serving the soak's state directory, found from its files."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def pid_file(self) -> Path:
        return self.world.state / "proxy" / "proxy.pid"

    def coordinator(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def workers(self) -> list[int]:
        pid = self.coordinator()
        return [p for p in children_of(pid) if alive(p)] if pid else []

    def coordinators(self) -> list[int]:
        """Every live proxy of this state directory, by its root process (the socket
        keeper, whose child is the coordinator; more than one only during a handover)."""
        pids = processes_naming(str(self.world.state), ("gitorch.traffic.proxy", "proxy"))
        return [p for p in pids if read_proc(p) is not None and read_proc(p).ppid not in pids]  # type: ignore[union-attr]

    def answers(self, timeout: float = 2.0) -> int | None:
        """The pid of the proxy answering ``hello`` on the control socket, else None."""
        from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call

        try:
            hello = call(ProxyPaths.of(self.world.state).socket, {"op": "hello"}, timeout)
        except ProxyUnavailable:
            return None
        pid = hello.get("pid")
        return int(pid) if isinstance(pid, int) else None

    def stop(self) -> None:
        """``gitorch proxy stop``, then SIGKILL for whatever is left (cleanup)."""
        for pid in self.coordinators():
            signal_pid(pid, signal.SIGCONT)
            for kid in children_of(pid):
                signal_pid(kid, signal.SIGCONT)
        _run(
            [sys.executable, "-m", "gitorch", "proxy", "stop", "--state", str(self.world.state)],
            env=child_env(),
            timeout=60,
        )
        deadline = time.monotonic() + 15
        while self.coordinators() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.coordinators():  # the socket keeper first: it would start another
            kids = children_of(pid)
            signal_pid(pid, signal.SIGKILL)
            for kid in kids:
                for grandchild in children_of(kid):
                    signal_pid(grandchild, signal.SIGKILL)
                signal_pid(kid, signal.SIGKILL)


# -- processes that are not gitorch's ------------------------------------------------------

FOREIGN_SERVER = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(64)
print("listening", flush=True)
while True:
    conn, _ = sock.accept()
    try:
        conn.settimeout(2)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 418 I'm a teapot\\r\\nContent-Length: 8\\r\\nConnection: close\\r\\n\\r\\nforeign\\n")
    except OSError:
        pass
    finally:
        conn.close()
"""


@dataclass
class Foreign:
    """A process gitorch did not start: it must be left alone."""

    label: str
    pid: int
    ticks: int
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    stop: Callable[[], None] | None = None

    @classmethod
    def listener(cls, label: str, port: int, logs: Path) -> Foreign:
        """A small HTTP server on ``port`` answering 418 to everything."""
        with (logs / f"foreign-{label}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", FOREIGN_SERVER, str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the foreign listener on {port} exited at once")
            time.sleep(0.05)
        stat = read_proc(proc.pid)
        return cls(label, proc.pid, stat.ticks if stat else 0, proc=proc, port=port)

    @classmethod
    def adopt(cls, label: str, pid: int, stop: Callable[[], None]) -> Foreign:
        stat = read_proc(pid)
        return cls(label, pid, stat.ticks if stat else -1, stop=stop)

    def intact(self) -> str | None:
        """None while the process runs untouched, else what happened to it."""
        stat = read_proc(self.pid)
        if (self.proc is not None and self.proc.poll() is not None) or stat is None:
            return f"{self.label} (pid {self.pid}) is gone"
        if stat.state in ("Z", "X"):
            return f"{self.label} (pid {self.pid}) was killed"
        if stat.ticks != self.ticks:
            return f"{self.label}: pid {self.pid} is another process now"
        if stat.state == "T":
            return f"{self.label} (pid {self.pid}) is stopped"
        return None

    def end(self) -> None:
        if self.stop is not None:
            self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# -- cleanup -------------------------------------------------------------------------------


class Cleanup:
    """Undo steps run last-in first-out, each once, even after an interruption."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self.errors: list[str] = []

    def push(self, what: str, step: Callable[[], None]) -> None:
        self._steps.append((what, step))

    def run(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except BaseException as exc:  # every step runs, whatever the one before did
                self.errors.append(f"{what}: {exc!r}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP end the soak like Ctrl-C (so the cleanup runs)."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def copy_out(src: Path, dst: Path) -> None:
    """Copy what can be read of ``src`` (the state directory) before it is unmounted."""
    with contextlib.suppress(OSError):
        shutil.copytree(
            src,
            dst,
            ignore=shutil.ignore_patterns("*.sock", "cache", "filler"),
            dirs_exist_ok=True,
            ignore_dangling_symlinks=True,
        )

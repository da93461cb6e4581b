"""The process driver: replicas as plain local processes (like Nomad's ``raw_exec``).

Each replica is a child started with ``argv = command + args`` (never a shell) in its own
session and process group, with a clean environment, its output appended to log files and
a bookkeeping record in ``<state_dir>/replicas/<name>/`` (see :mod:`._proc_store`).
Replicas **outlive the daemon**: a new :class:`ProcessRuntime` on the same ``state_dir``
re-adopts them from their records.

What is and is not enforced
---------------------------
* **Identity.** A replica is ``(boot id, pid, start ticks)`` (``/proc/<pid>/stat`` field
  22). A recycled pid has another start time, so it is reported ``EXITED`` and is never
  signalled. The recorded cmdline is *not* compared: programs may rewrite their own title
  (nginx, postgres, setproctitle), which would make a live replica look gone and get it
  duplicated; the start time alone is already unambiguous within one boot.
* **Exit codes.** While this Python process is the parent, a reaper thread (one for all
  children, see :mod:`._proc_reaper`) reaps each child the moment it exits (so no zombie is ever left) and writes the exit code to the
  record. A death by signal N is reported as ``128 + N`` (what a shell and Docker report).
  After a daemon restart the replicas are no longer our children (the kernel re-parents
  them), so when an adopted replica exits its code is unknown: ``exit_code=None``. A
  supervisor process per replica would keep the code, but it costs one more interpreter
  (~10 MB and ~30 ms of start time) per replica and is one more thing that can die; the
  reconciler only needs "it exited", so we do not pay for it.
* **Limits.** Where a cgroup hierarchy is writable (see :mod:`._cgroups`; v1 and v2), each
  replica runs in its own group ``gitorch/<cluster>/<node>/<replica>``, created with its
  limits *before* the program starts: ``memory_limit`` is the group's memory limit (swap
  included), ``cpu_limit`` a cfs quota. The child is a tiny ``/bin/sh`` launcher that
  writes its own pid into the group and then execs the replica's argv (same pid, so
  same identity), so not one instruction of the replica runs outside its group
  (``preexec_fn`` would do the same from Python, but it is unsafe in a threaded daemon).
  A replica the kernel kills for its memory limit reports ``exit_reason="OOMKilled"``.
  Every process of the group dies with the replica, even those that left its process
  group. The group is removed with the replica; a daemon killed in between finds it again
  (:meth:`ProcessRuntime.reap_orphans`). Without a writable cgroup limits are **recorded,
  not enforced**, and :meth:`node_info` says so: ``RLIMIT_AS`` is not a memory limit
  (it caps address space, and a Python program under 64 MiB of it cannot start threads).
* **Ports.** Each port is an ephemeral free port on ``address`` found by binding port 0;
  it is released before the replica starts, so another program could take it in between
  (the replica then fails to bind and exits; the reconciler replaces it).
* **Environment.** ``PATH``, ``HOME`` and ``LANG`` of the daemon, then ``spec.env``, then
  ``PORT`` and ``PORT_<NAME>`` (these win: they must match the allocated ports).
* **Working directory.** ``spec.working_dir`` is resolved (symlinks followed) against the
  operator-allowed root ``workdir``; anything outside is refused with
  :class:`WorkingDirOutsideRoot`.
* **Start failures.** A command that does not exist, is not executable or is no program,
  a missing working directory, and a spec with an image but no command raise
  :class:`ReplicaStartFailed` saying exactly that, before anything is spawned.
* **Logs.** stdout and stderr both go to ``output.log`` (one file, appended by the replica
  itself, no pump thread), so they read in the order they were written.
  :meth:`ProcessRuntime.remove` keeps the last 64 KiB of it and the facts of the replica
  (exit code and reason, times) for the last few removed replicas of each service
  (:mod:`._retained`), then deletes the replica's folder. The file itself is not rotated:
  a replica that writes without end fills the disk it lives on.
* **Volumes.** A volume is a directory under ``<state_dir>/volumes/<cluster>/`` (or an
  allowed host path; see :mod:`._volume_dirs`), handed to the replica as ``VOLUME_<NAME>``
  (never as its working directory). ``readOnly`` mounts are enforced: the launcher runs
  under ``unshare --mount --propagation private`` (which execs, keeping the pid) and
  remounts each such directory read-only onto itself before it execs the replica; where
  mount namespaces are unavailable such a replica is not started. Sizes are recorded,
  not enforced.
* **Usage.** cpu% is the utime+stime delta of the whole process group since the previous
  :meth:`usage` call on this runtime object (the first call samples over 100 ms); memory is
  the summed RSS of the group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gitorch.errors import InstanceNotFound, ReplicaStartFailed, RuntimeDriverError, VolumeError
from gitorch.runtime import _cgroups, _proc, _secret_files
from gitorch.runtime._proc_reaper import REAPER
from gitorch.runtime._proc_store import (
    OUTPUT_FILE,
    STDERR_FILE,
    STDOUT_FILE,
    PortRecord,
    RecordStore,
    ReplicaRecord,
)
from gitorch.runtime._retained import RetainedStore, tail_file
from gitorch.runtime._volume_dirs import VolumeDirs
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_VOLUMES,
    SECRETS_DIR_ENV,
    Instance,
    InstanceState,
    NodeInfo,
    PortBinding,
    PortRequest,
    Probe,
    ProbeResult,
    ReplicaSpec,
    ResourceUsage,
    RetainedLog,
    VolumeInfo,
    VolumeSpec,
    volume_env_name,
)
from gitorch.runtime.probes import http_check, tcp_check

log = logging.getLogger(__name__)

#: Environment variable every replica gets: its name, so an unrecorded one can be found.
REPLICA_MARKER = "GITORCH_REPLICA"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_ID_RE = re.compile(r"^(\d+)-(\d+)$")
#: How long stop/remove wait for a SIGKILLed group leader to disappear.
_KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.01
_FIRST_USAGE_SAMPLE_SECONDS = 0.1
_FOLLOW_POLL_SECONDS = 0.2
#: ``sh -c LAUNCHER gitorch-launch N FILE... MOUNT R DIR... ARGV...``: write our pid into
#: the N ``cgroup.procs`` files, make each of the R directories a read-only bind of itself
#: (with the ``mount`` program MOUNT; the launcher then runs in a private mount namespace,
#: see ``_unshare``), then become the replica (exec keeps the pid). 125 (with a line on
#: stderr) when a group cannot be joined or a directory made read-only: the replica then
#: never ran. The shell sets ``PWD`` to the working directory (whatever the env said): it
#: is dropped again unless the spec's env has one, so the replica's env is exactly what it
#: would be without a launcher.
LAUNCHER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do '
    'echo $$ >"$1" || { echo "gitorch: cannot join cgroup $1" >&2; exit 125; }; '
    'shift; n=$((n - 1)); done; m=$1; r=$2; shift 2; while [ "$r" -gt 0 ]; do '
    '{ "$m" --bind "$1" "$1" && "$m" -o remount,bind,ro "$1" "$1"; } || '
    '{ echo "gitorch: cannot make volume $1 read-only" >&2; exit 125; }; '
    'shift; r=$((r - 1)); done; exec "$@"'
)
_LAUNCHER_WITHOUT_PWD = "unset PWD; " + LAUNCHER
#: Program formats ``execve`` runs: ELF binaries and ``#!`` scripts.
_PROGRAM_MAGIC = (b"\x7fELF", b"#!")


_UNSHARE: tuple[str, ...] | None = None
_UNSHARE_WHY = ""
_UNSHARE_LOCK = threading.Lock()


def _unshare() -> tuple[tuple[str, ...] | None, str]:
    """The command that runs a program in a private mount namespace (``unshare --mount
    --propagation private``; it execs, so the pid is kept), or None and why not: checked
    once per process by running it (it needs CAP_SYS_ADMIN, i.e. root or a user
    namespace the kernel allows)."""
    global _UNSHARE, _UNSHARE_WHY
    with _UNSHARE_LOCK:
        if _UNSHARE is None and not _UNSHARE_WHY:
            unshare, mount = shutil.which("unshare"), shutil.which("mount")
            if unshare is None or mount is None:
                _UNSHARE_WHY = "the unshare and mount programs (util-linux) are not installed"
            else:
                argv = (unshare, "--mount", "--propagation", "private")
                done = subprocess.run(  # noqa: S603 (a fixed argv)
                    [*argv, mount, "--bind", "/", "/"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                if done.returncode == 0:
                    _UNSHARE = (*argv, mount)
                else:
                    _UNSHARE_WHY = (
                        "private mount namespaces are not available here "
                        f"(unshare: {done.stderr.strip() or f'exit {done.returncode}'})"
                    )
        return _UNSHARE, _UNSHARE_WHY


class WorkingDirOutsideRoot(ReplicaStartFailed):
    """``working_dir`` resolves outside the root the operator allowed (``workdir``)."""


class ReplicaStopFailed(RuntimeDriverError):
    """A replica did not die even after SIGKILL (e.g. stuck in uninterruptible I/O)."""


@dataclass
class _Child:
    """A replica this Python process spawned and therefore must reap."""

    popen: subprocess.Popen[bytes]
    name: str
    cgroup: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


# Children belong to the Python *process*, not to one runtime object: a second
# ProcessRuntime in the same process (a restart in tests) must still see that an exit is
# being recorded, and wait for it, instead of reporting an unknown exit code.
_CHILDREN: dict[str, _Child] = {}
_CHILDREN_LOCK = threading.Lock()


#: The umask replicas start with.
REPLICA_UMASK = 0o022


def _probe_env(record: ReplicaRecord) -> dict[str, str]:
    """An exec probe's environment: the replica's, its secrets read back from the
    process itself (they are in no record)."""
    env = dict(record.env)
    if record.secret_env:
        try:
            raw = Path(f"/proc/{record.pid}/environ").read_bytes()
        except OSError:
            return env
        wanted = set(record.secret_env)
        for item in raw.split(b"\0"):
            name, sep, value = item.partition(b"=")
            key = name.decode("utf-8", "surrogateescape")
            if sep and key in wanted:
                env[key] = value.decode("utf-8", "surrogateescape")
    return env


def _exit_status(returncode: int) -> int:
    """Popen's ``-N`` (killed by signal N) as the shell's ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


def _exit_reason(returncode: int, oom_kills: int | None) -> str:
    """``"OOMKilled"``, ``"signal N"`` or ``"exit N"`` from Popen's returncode."""
    if returncode == -signal.SIGKILL and oom_kills:
        return "OOMKilled"
    return f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"


_DETECTED: _cgroups.Detected | None = None
_DETECT_LOCK = threading.Lock()


def detect_cgroups() -> _cgroups.Detected:
    """The machine's cgroups, detected once per process (mounts do not move under us)."""
    global _DETECTED
    with _DETECT_LOCK:
        if _DETECTED is None:
            _DETECTED = _cgroups.detect()
        return _DETECTED


def check_program(command: str, cwd: Path, path_env: str) -> Path:
    """Where ``command`` is, as ``execve`` would find it, or :class:`ReplicaStartFailed`
    saying why it cannot run (missing, a folder, not executable, not a program)."""
    if "/" in command:
        candidate = cwd / command
        if not candidate.exists():
            raise ReplicaStartFailed(f"command {command} does not exist")
    else:
        # An empty or relative PATH entry is relative to the replica's working dir.
        found = [cwd / (d or ".") / command for d in path_env.split(":")]
        existing = [p for p in found if p.is_file()]
        runnable = [p for p in existing if os.access(p, os.X_OK)]
        if not existing:
            raise ReplicaStartFailed(f"command {command} not found in PATH ({path_env})")
        candidate = (runnable or existing)[0]
    if candidate.is_dir():
        raise ReplicaStartFailed(f"command {command} is a folder, not a program")
    if not os.access(candidate, os.X_OK):
        mode = candidate.stat().st_mode & 0o7777
        raise ReplicaStartFailed(f"command {command} is not executable (mode {mode:04o})")
    try:
        with open(candidate, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ReplicaStartFailed(f"command {command} cannot be read: {exc.strerror}") from exc
    if not head.startswith(_PROGRAM_MAGIC):
        raise ReplicaStartFailed(
            f"command {command} is not a program (neither an ELF binary nor a #! script)"
        )
    return candidate


class ProcessRuntime:
    """Runs replicas as local processes of this node. See the module docstring."""

    driver = "process"

    def __init__(
        self,
        node_name: str,
        state_dir: Path,
        *,
        address: str = "127.0.0.1",
        workdir: Path | None = None,
        cgroups: _cgroups.CgroupTree | None | Literal["auto"] = "auto",
        allowed_host_paths: tuple[Path, ...] = (),
    ) -> None:
        """``cgroups``: ``"auto"`` detects the machine's (see :mod:`._cgroups`); None
        enforces no limits (they are recorded only); a tree uses that one.
        ``allowed_host_paths``: where a Volume's hostPath may be (``--allow-host-path``)."""
        self.node_name = node_name
        self.address = address
        self.state_dir = Path(state_dir)
        self.workdir = (workdir if workdir is not None else Path.cwd()).resolve()
        self._store = RecordStore(self.state_dir)
        self._volumes = VolumeDirs(self.state_dir, node_name, tuple(allowed_host_paths))
        self._retained = RetainedStore(self.state_dir)
        self._cgroups_choice = cgroups
        self._detected: _cgroups.Detected | None = None
        self._creating: set[str] = set()  # names between claim and first record write
        self._boot_id = _proc.boot_id()
        self._id_to_name: dict[str, str] = {}
        self._cpu_samples: dict[str, tuple[float, int]] = {}
        self._exit_listener: Callable[[str], None] | None = None
        self._ending: set[str] = set()  # replicas stop() or remove() ends: no one to tell
        self._adopted_watched: set[str] = set()  # adopted replicas whose exit we will hear
        # The last listing's running instances by record name, with the record they were
        # made of: handed out again while the record is the same (unchanged file) and it
        # still runs, so an observation of 4,000 replicas builds only what moved.
        self._listed: dict[str, tuple[ReplicaRecord, Instance]] = {}

    def on_exit(self, listener: Callable[[str], None] | None) -> None:
        """Call ``listener(instance_id)`` (on the reaper's thread) once a replica this
        process started has exited by itself (not through :meth:`stop` or
        :meth:`remove`) and its exit is recorded: the daemon passes at once instead of at
        its next resync. Replicas adopted from an earlier daemon are not its children:
        their exit is heard through a pidfd once :meth:`list_instances` has seen them
        running (exit code unknown, as for every adopted replica)."""
        self._exit_listener = listener

    # -- capacity ---------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        """This machine's cpus (those we may run on) and ``MemTotal``; always ready.
        ``limits`` says whether memory and cpu limits are enforced (cgroups) or not."""
        return NodeInfo(
            name=self.node_name,
            driver=self.driver,
            ready=True,
            cpu_cores=float(len(os.sched_getaffinity(0))),
            memory_bytes=_proc.mem_total_bytes(),
            address=self.address,
            limits=self._limits().limits,
        )

    def _limits(self) -> _cgroups.Detected:
        if self._detected is None:
            choice = self._cgroups_choice
            if choice == "auto":
                self._detected = detect_cgroups()
            elif choice is None:
                self._detected = _cgroups.Detected(None, "not enforced: cgroups turned off")
            else:
                self._detected = _cgroups.Detected(choice, choice.describe())
        return self._detected

    @property
    def cgroups(self) -> _cgroups.CgroupTree | None:
        """The cgroup tree replicas are put in (None: limits are not enforced)."""
        return self._limits().tree

    def cgroup_of(self, instance_id: str) -> str | None:
        """The cgroup of a replica, relative to each hierarchy root (None: it has none)."""
        return self._find(instance_id).cgroup

    # -- observing --------------------------------------------------------------------

    def reap_orphans(self) -> int:
        """Kill processes whose replica has a folder but no record, and drop the folder.

        A daemon killed between spawning a replica and writing its record leaves such a
        process: never reported, so nothing relies on it. Only the daemon that owns the
        state directory may call this (read-only commands must not), and only for folders
        no create() of this object is filling right now. Returns how many were killed.
        """
        killed = self._reap_orphan_groups()
        pending = [
            n
            for n in self._store.names()
            if self._store.read(n) is None and n not in self._creating
        ]
        if not pending:
            return killed
        tree = self.cgroups
        for name in pending:
            group = self._store.read_cgroup(name)
            if tree is not None and group is not None:
                killed += len(tree.pids(group))
                self._remove_group_quietly(group)
        marks = {f"{REPLICA_MARKER}={name}".encode(): name for name in pending}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    environ = fh.read().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item in marks:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(entry.name), signal.SIGKILL)
                    killed += 1
        for name in pending:
            self._store.delete(name)
            _secret_files.remove_files(name)
        return killed

    def _reap_orphan_groups(self) -> int:
        """Remove groups under this node's parents that no replica folder claims.

        A group is made after its replica's folder and removed before it, so a group
        without a folder belongs to nobody (a folder deleted by hand, or a crash of an
        older gitorch). Returns how many processes were killed with them.
        """
        tree = self.cgroups
        if tree is None:
            return 0
        parents = {r.cgroup.rpartition("/")[0] for r in self._store.all() if r.cgroup}
        parents |= {
            g.rpartition("/")[0]
            for g in (self._store.read_cgroup(n) for n in self._store.names())
            if g is not None
        }
        known = set(self._store.names())
        killed = 0
        for parent in parents:
            for child in tree.children(parent):
                if child in known or child in self._creating:
                    continue
                group = f"{parent}/{child}"
                killed += len(tree.pids(group))
                self._remove_group_quietly(group)
        return killed

    def _remove_group_quietly(self, group: str) -> None:
        tree = self.cgroups
        if tree is None:
            return
        try:
            tree.remove(group)
        except OSError as exc:
            log.warning("node %s: cannot remove cgroup %s: %s", self.node_name, group, exc)

    def list_instances(self, cluster: str) -> list[Instance]:
        """Every recorded replica of ``cluster``; recycled pids show as ``EXITED``.

        A running replica whose record did not change since the last listing is the same
        :class:`Instance` object as then (its process checked again in ``/proc``): the
        observation reuses what it built of it (:func:`gitorch.live.observe.observe`)."""
        instances = []
        listed = self._listed
        kept: dict[str, tuple[ReplicaRecord, Instance]] = {}
        for record in self._store.all():
            if record.labels.get(LABEL_CLUSTER) != cluster:
                continue
            self._id_to_name[record.instance_id] = record.name
            state, exit_code = self._observe(record)
            known = listed.get(record.name)
            if state is InstanceState.RUNNING and known is not None and known[0] is record:
                instance = known[1]
            else:
                instance = self._instance_of(record, state, exit_code)
            if instance.state is InstanceState.RUNNING:
                kept[record.name] = (record, instance)
                self._hear_adopted_exit(record)
            instances.append(instance)
        self._listed = kept
        return instances

    def _hear_adopted_exit(self, record: ReplicaRecord) -> None:
        """Watch a running replica this process did not start, so that its death wakes
        the listener as a child's does (a set lookup per replica and pass otherwise)."""
        instance_id = record.instance_id
        if self._exit_listener is None or instance_id in self._adopted_watched:
            return
        with _CHILDREN_LOCK:
            if instance_id in _CHILDREN:
                return
            self._adopted_watched.add(instance_id)

        def is_still_it() -> bool:
            stat = _proc.read_stat(record.pid)
            return stat is not None and stat.start_ticks == record.start_ticks

        if not REAPER.watch_pid(record.pid, is_still_it, lambda: self._adopted_gone(instance_id)):
            with _CHILDREN_LOCK:
                self._adopted_watched.discard(instance_id)

    def _adopted_gone(self, instance_id: str) -> None:
        with _CHILDREN_LOCK:
            self._adopted_watched.discard(instance_id)
            ended_by_us = instance_id in self._ending
            self._ending.discard(instance_id)
        listener = self._exit_listener
        if not ended_by_us and listener is not None:
            listener(instance_id)

    def inspect(self, instance_id: str) -> Instance:
        return self._to_instance(self._find(instance_id))

    def logs(self, instance_id: str, tail: int = 100) -> str:
        """The last ``tail`` lines of the replica's output (stdout and stderr as written)."""
        record = self._find(instance_id)
        if tail <= 0:
            return ""
        return "".join(line + "\n" for line in self._tail(record.name, tail))

    def _tail(self, name: str, count: int, end: int | None = None) -> list[str]:
        folder = self._store.folder(name)
        if (folder / OUTPUT_FILE).exists():
            return _proc.tail_lines(folder / OUTPUT_FILE, count, end=end)
        # A replica started by an earlier gitorch: "all of stdout, then all of stderr".
        lines = _proc.tail_lines(folder / STDOUT_FILE, count)
        lines += _proc.tail_lines(folder / STDERR_FILE, count)
        return lines[-count:] if count > 0 else []

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """The last ``tail`` lines, then each new line until the replica has exited (or
        was removed) and everything it wrote was read, or ``stop`` is set. Polls the file
        every 0.2 s."""
        record = self._find(instance_id)
        path = self._store.folder(record.name) / OUTPUT_FILE
        try:
            start = path.stat().st_size
        except FileNotFoundError:
            start = 0
        return self._follow(record, path, tail, start, stop or threading.Event())

    def _follow(
        self, record: ReplicaRecord, path: Path, tail: int, start: int, stop: threading.Event
    ) -> Iterator[str]:
        yield from self._tail(record.name, tail, end=start) if tail > 0 else []
        offset, pending = start, b""
        finished = False
        while not stop.is_set():
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                data, finished = b"", True  # removed: nothing more will come
            offset += len(data)
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
            if finished:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            if not data:
                # One more read after the exit: what it wrote last may still be unread.
                fresh = self._store.read(record.name)
                finished = fresh is None or fresh.instance_id != record.instance_id
                finished = finished or self._observe(record)[0] is not InstanceState.RUNNING
                if not finished:
                    stop.wait(_FOLLOW_POLL_SECONDS)

    def retained_logs(self, cluster: str, service: str) -> list[RetainedLog]:
        """The last removed replicas of ``service`` on this node, newest first."""
        return self._retained.list(cluster, service)

    def usage(self, instance_id: str) -> ResourceUsage:
        """cpu% since the previous call (first call: over 100 ms) and RSS of the group."""
        record = self._find(instance_id)
        if self._observe(record)[0] is not InstanceState.RUNNING:
            return ResourceUsage(cpu_percent=0.0, memory_bytes=0)
        previous = self._cpu_samples.get(instance_id)
        if previous is None:
            previous = (time.monotonic(), self._group_ticks(record.pid)[0])
            time.sleep(_FIRST_USAGE_SAMPLE_SECONDS)
        now = time.monotonic()
        ticks, rss = self._group_ticks(record.pid)
        self._cpu_samples[instance_id] = (now, ticks)
        elapsed = max(now - previous[0], 1e-6)
        # A member that exited takes its ticks with it: never report a negative delta.
        cpu_seconds = max(ticks - previous[1], 0) / _proc.CLOCK_TICKS
        return ResourceUsage(cpu_percent=100.0 * cpu_seconds / elapsed, memory_bytes=rss)

    # -- volumes ----------------------------------------------------------------------

    def create_volume(self, spec: VolumeSpec, cluster: str) -> VolumeInfo:
        """A directory under the state directory (or the allowed host path): made, or
        adopted with its data. The size is recorded, not enforced (see :mod:`._volume_dirs`)."""
        return self._volumes.create(spec, cluster)

    def list_volumes(self, cluster: str) -> list[VolumeInfo]:
        """The volumes of ``cluster`` whose directory exists on this node."""
        return self._volumes.list(cluster)

    def remove_volume(self, name: str, cluster: str) -> None:
        """Delete the volume's directory (a host path is left alone); refused while a
        replica of this node that mounts it still exists."""
        users = [
            r.name
            for r in self._store.all()
            if r.labels.get(LABEL_CLUSTER) == cluster
            and name in (v.partition(":")[0] for v in r.labels.get(LABEL_VOLUMES, "").split(","))
        ]
        if users:
            raise VolumeError(
                f"volume {name} is still used by {', '.join(sorted(users))} on node "
                f"{self.node_name}"
            )
        self._volumes.remove(cluster, name)

    def _mounts(self, spec: ReplicaSpec, cluster: str) -> tuple[dict[str, str], list[str]]:
        """``VOLUME_<NAME>`` of each mount, and the directories to make read-only."""
        env: dict[str, str] = {}
        read_only: list[str] = []
        for mount in spec.mounts:
            path = self._volumes.path(cluster, mount.volume.name)
            if path is None:
                raise ReplicaStartFailed(
                    f"replica {spec.name}: volume {mount.volume.name} is not on node "
                    f"{self.node_name}"
                )
            env[volume_env_name(mount.name)] = str(path)
            if mount.read_only:
                read_only.append(str(path))
        if read_only and _unshare()[0] is None:
            raise ReplicaStartFailed(
                f"replica {spec.name}: its readOnly volume mount cannot be enforced on node "
                f"{self.node_name}: {_unshare()[1]}; it is not started with write access"
            )
        return env, read_only

    # -- changing ---------------------------------------------------------------------

    def create(self, spec: ReplicaSpec, cluster: str) -> Instance:
        """Spawn the replica and return it running (or already exited, if it was quick)."""
        if not _NAME_RE.match(spec.name):
            raise ReplicaStartFailed(
                f"replica name {spec.name!r} is not usable as a folder name "
                "(letters, digits, '.', '_' and '-' only)"
            )
        if not spec.command:
            if spec.image:
                raise ReplicaStartFailed(
                    f"replica {spec.name}: the process driver runs a command, and this "
                    f"service has only an image ({spec.image}): give it a command, or "
                    "place it on a docker node"
                )
            raise ReplicaStartFailed(f"replica {spec.name}: the process driver needs a command")
        cwd = self._resolve_working_dir(spec)
        volume_env, read_only = self._mounts(spec, cluster)
        path_env = spec.env.get("PATH") or os.environ.get("PATH", DEFAULT_PATH)
        try:
            check_program(spec.command[0], cwd, path_env)
        except ReplicaStartFailed as exc:
            raise ReplicaStartFailed(f"replica {spec.name}: {exc.message}") from None
        try:
            folder = self._store.claim(spec.name)
        except FileExistsError:
            raise ReplicaStartFailed(
                f"replica {spec.name} already exists on node {self.node_name}: remove it first"
            ) from None
        self._creating.add(spec.name)
        try:
            return self._spawn(spec, cluster, cwd, folder, volume_env, read_only)
        except BaseException:
            self._store.delete(spec.name)
            _secret_files.remove_files(spec.name)
            raise
        finally:
            self._creating.discard(spec.name)

    def stop(self, instance_id: str, grace_seconds: float) -> None:
        """SIGTERM the group, wait ``grace_seconds`` for the leader, then SIGKILL the group."""
        record = self._find(instance_id)
        if self._observe(record)[0] is InstanceState.RUNNING:
            self._expect_exit(instance_id)
            self._signal_group(record, signal.SIGTERM)
            if not self._wait_gone(record, grace_seconds):
                self._signal_group(record, signal.SIGKILL)
                if not self._wait_gone(record, _KILL_WAIT_SECONDS):
                    raise ReplicaStopFailed(
                        f"replica {record.name} (pid {record.pid}) survived SIGKILL"
                    )
        self._kill_stragglers(record)

    def remove(self, instance_id: str) -> None:
        """SIGKILL the replica if it runs, remove its cgroup, keep its last output and
        facts (see :meth:`retained_logs`), then delete its record and its folder."""
        record = self._find(instance_id)
        if self._observe(record)[0] is InstanceState.RUNNING:
            self._expect_exit(instance_id)
            self._signal_group(record, signal.SIGKILL)
            if not self._wait_gone(record, _KILL_WAIT_SECONDS):
                raise ReplicaStopFailed(
                    f"replica {record.name} (pid {record.pid}) survived SIGKILL"
                )
        self._kill_stragglers(record)
        # The facts before the group goes: an OOM kill is read from the group.
        final = self._to_instance(self._store.read(record.name) or record)
        tree = self.cgroups
        if record.cgroup is not None and tree is not None:
            try:
                tree.remove(record.cgroup)
            except OSError as exc:
                # The record stays, so the next pass sees the replica and tries again.
                raise ReplicaStopFailed(
                    f"replica {record.name}: cannot remove its cgroup: {exc}"
                ) from exc
        self._retain(record, final)
        self._store.delete(record.name)
        _secret_files.remove_files(record.name)
        self._id_to_name.pop(instance_id, None)
        self._cpu_samples.pop(instance_id, None)

    # -- probing ----------------------------------------------------------------------

    def probe(self, instance: Instance, probe: Probe) -> ProbeResult:
        """Run one probe; a failing (or vanished) replica gives ``ok=False``, never raises."""
        started = time.monotonic()
        try:
            ok, message = self._run_probe(instance, probe)
        except Exception as exc:  # a probe reports, it never breaks the reconcile loop
            ok, message = False, f"probe error: {exc}"
        return ProbeResult(ok=ok, message=message, duration_seconds=time.monotonic() - started)

    def _run_probe(self, instance: Instance, probe: Probe) -> tuple[bool, str]:
        if probe.exec_command:
            return self._probe_exec(instance, probe)
        target = self._probe_target(instance, probe.port)
        if target is None:
            return False, f"no published port {probe.port} on {instance.name}"
        host, port = target
        if probe.http_path is not None:
            return http_check(host, port, probe.http_path, probe.timeout_seconds)
        if probe.tcp:
            return tcp_check(host, port, probe.timeout_seconds)
        return False, "empty probe: neither http, tcp nor exec"

    def _probe_target(self, instance: Instance, port: int | None) -> tuple[str, int] | None:
        for binding in instance.ports:
            if port is None or binding.container_port == port:
                # A replica bound to every address is reached on loopback.
                host = "127.0.0.1" if binding.host_ip in ("0.0.0.0", "") else binding.host_ip
                return host, binding.host_port
        return None

    def _probe_exec(self, instance: Instance, probe: Probe) -> tuple[bool, str]:
        try:
            record = self._find(instance.id)
        except InstanceNotFound:
            return False, "replica is gone"
        try:
            # Running the manifest's argv is this driver's job; no shell is involved.
            child = subprocess.Popen(  # noqa: S603
                list(probe.exec_command),
                cwd=record.cwd,
                env=_probe_env(record),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # so a timeout can kill everything it started
            )
        except OSError as exc:
            return False, f"exec {probe.exec_command[0]}: {exc.strerror or exc}"
        try:
            code = child.wait(timeout=probe.timeout_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return False, f"exec timed out after {probe.timeout_seconds:g}s"
        return code == 0, f"exit {_exit_status(code)}"

    # -- internals --------------------------------------------------------------------

    def _resolve_working_dir(self, spec: ReplicaSpec) -> Path:
        cwd = self.workdir if spec.working_dir is None else (self.workdir / spec.working_dir)
        cwd = cwd.resolve()
        if not cwd.is_relative_to(self.workdir):
            raise WorkingDirOutsideRoot(
                f"replica {spec.name}: working_dir {spec.working_dir!r} resolves to {cwd}, "
                f"outside the allowed root {self.workdir}"
            )
        if not cwd.exists():
            raise ReplicaStartFailed(f"replica {spec.name}: working_dir {cwd} does not exist")
        if not cwd.is_dir():
            raise ReplicaStartFailed(f"replica {spec.name}: working_dir {cwd} is not a folder")
        return cwd

    def _allocate_ports(self, requests: tuple[PortRequest, ...]) -> list[PortRecord]:
        sockets = []
        ports = []
        try:
            # Hold every socket until all are bound, so one replica never gets a port twice.
            for request in requests:
                kind = socket.SOCK_DGRAM if request.protocol == "udp" else socket.SOCK_STREAM
                family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
                sock = socket.socket(family, kind)
                sockets.append(sock)
                sock.bind((self.address, 0))
                ports.append(
                    PortRecord(
                        name=request.name,
                        container_port=request.container_port,
                        host_ip=self.address,
                        host_port=sock.getsockname()[1],
                        protocol=request.protocol,
                    )
                )
        except OSError as exc:
            raise ReplicaStartFailed(f"cannot allocate a port on {self.address}: {exc}") from exc
        finally:
            for sock in sockets:
                sock.close()
        return ports

    def _environment(self, spec: ReplicaSpec, ports: list[PortRecord]) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", DEFAULT_PATH),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(spec.env)
        if ports:
            env["PORT"] = str(ports[0].host_port)
        for port in ports:
            env[f"PORT_{re.sub(r'[^A-Za-z0-9]', '_', port.name).upper()}"] = str(port.host_port)
        return env

    def _make_group(self, spec: ReplicaSpec, cluster: str) -> tuple[str | None, list[str]]:
        """The replica's cgroup, created with its limits, and the files to join it by
        (``(None, [])`` where limits are not enforced)."""
        tree = self.cgroups
        if tree is None:
            return None, []
        group = f"{_cgroups.PARENT}/{cluster}/{self.node_name}/{spec.name}"
        # Announced before it exists: a daemon killed from here on finds it (reap_orphans).
        self._store.write_cgroup(spec.name, group)
        try:
            files = tree.create(group, memory_bytes=spec.memory_limit, cpu_cores=spec.cpu_limit)
        except OSError as exc:
            self._remove_group_quietly(group)
            raise ReplicaStartFailed(
                f"replica {spec.name}: cannot create its cgroup for the limits: {exc}"
            ) from exc
        return group, [str(f) for f in files]

    def _spawn(
        self,
        spec: ReplicaSpec,
        cluster: str,
        cwd: Path,
        folder: Path,
        volume_env: dict[str, str],
        read_only: list[str],
    ) -> Instance:
        ports = self._allocate_ports(spec.ports)
        # The marker lets a later daemon find this process if we die before its record
        # is written (see reap_orphans).
        env = {**self._environment(spec, ports), **volume_env, REPLICA_MARKER: spec.name}
        if spec.secret_files:
            # 0600: the replica runs as this user; on tmpfs, in a folder of its own.
            folder_of_secrets = _secret_files.write_files(spec.name, spec.secret_files, 0o600)
            env[SECRETS_DIR_ENV] = str(folder_of_secrets)
        recorded_env = dict(env)
        env.update(spec.secret_env)  # given to the process, never written to its record
        argv = [*spec.command, *spec.args]
        labels = {**spec.labels, LABEL_CLUSTER: cluster, LABEL_NODE: self.node_name}
        group, join = self._make_group(spec, cluster)
        script = LAUNCHER if "PWD" in env else _LAUNCHER_WITHOUT_PWD
        unshare: list[str] = []
        mount = "mount"
        if read_only:
            # readOnly is a read-only bind of the volume's directory onto itself, in a
            # mount namespace of the replica's own: the node and the other replicas keep
            # writing it, this replica (and whatever it starts) cannot.
            found = _unshare()[0]
            assert found is not None  # checked in _mounts
            *unshare, mount = found
        launch = [
            *unshare,
            "/bin/sh",
            "-c",
            script,
            "gitorch-launch",
            str(len(join)),
            *join,
            mount,
            str(len(read_only)),
            *read_only,
            *argv,
        ]
        launched = group is not None or bool(read_only)
        try:
            with open(folder / OUTPUT_FILE, "ab") as out:
                # Running the manifest's argv is this driver's job; the launcher is a fixed
                # script that passes argv on untouched ("$@"), never through a shell parse.
                popen = subprocess.Popen(  # noqa: S603
                    launch if launched else argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own session + group: signals reach all of it
                    close_fds=True,
                    # The daemon keeps its own files private (umask 077); a replica gets
                    # the usual umask, whatever the daemon's.
                    umask=REPLICA_UMASK,
                )
        except (OSError, ValueError) as exc:
            if group is not None:
                self._remove_group_quietly(group)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ReplicaStartFailed(
                f"replica {spec.name}: cannot start {argv[0]}: {reason}"
            ) from None
        started_at = time.time()
        # Popen returned after exec: the child is unreaped until our waiter runs, so its
        # /proc entry (maybe a zombie) is there to read the start time from.
        stat = _proc.read_stat(popen.pid)
        if stat is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            if group is not None:
                self._remove_group_quietly(group)
            raise ReplicaStartFailed(f"replica {spec.name}: /proc/{popen.pid} vanished")
        record = ReplicaRecord(
            name=spec.name,
            pid=popen.pid,
            start_ticks=stat.start_ticks,
            boot_id=self._boot_id,
            argv=argv,
            # Through the launcher the exec may not have happened yet: argv is what runs.
            cmdline=argv if launched else (_proc.read_cmdline(popen.pid) or []),
            cwd=str(cwd),
            env=recorded_env,
            secret_env=sorted(spec.secret_env),
            labels=labels,
            ports=ports,
            created_at=started_at,
            memory_limit=spec.memory_limit,
            cpu_limit=spec.cpu_limit,
            stop_grace_seconds=spec.stop_grace_seconds,
            cgroup=group,
        )
        self._store.write(record)
        self._id_to_name[record.instance_id] = record.name
        self._adopt_child(record, popen)
        return self._to_instance(record)

    def _adopt_child(self, record: ReplicaRecord, popen: subprocess.Popen[bytes]) -> None:
        instance_id = record.instance_id
        child = _Child(popen=popen, name=record.name, cgroup=record.cgroup)
        with _CHILDREN_LOCK:
            _CHILDREN[instance_id] = child
        REAPER.watch(popen, lambda returncode: self._record_exit(instance_id, child, returncode))

    def _expect_exit(self, instance_id: str) -> None:
        """The replica is being ended by gitorch: its exit is not told to the listener.
        Only the ids of replicas whose exit is watched (children, watched adopted ones)
        are kept."""
        with _CHILDREN_LOCK:
            if instance_id in _CHILDREN or instance_id in self._adopted_watched:
                self._ending.add(instance_id)

    def _record_exit(self, instance_id: str, child: _Child, returncode: int) -> None:
        """Called by the reaper once the child is reaped. Order matters: whoever no longer
        finds the child in ``_CHILDREN`` must find its exit code on disk."""
        try:
            oom_kills = None
            tree = self.cgroups
            if child.cgroup is not None and tree is not None and returncode == -signal.SIGKILL:
                oom_kills = tree.oom_kills(child.cgroup)
            self._store.record_exit(
                child.name,
                instance_id,
                _exit_status(returncode),
                time.time(),
                _exit_reason(returncode, oom_kills),
            )
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.pop(instance_id, None)
            child.done.set()
        listener = self._exit_listener
        if instance_id in self._ending:
            self._ending.discard(instance_id)  # gitorch ended it: the pass knows
        elif listener is not None:
            try:
                listener(instance_id)
            except Exception:  # a listener's bug must not stop the reaper
                log.exception("node %s: the exit listener failed", self.node_name)

    def _find(self, instance_id: str) -> ReplicaRecord:
        if not _ID_RE.match(instance_id):
            raise InstanceNotFound(f"no process replica {instance_id!r} on node {self.node_name}")
        name = self._id_to_name.get(instance_id)
        if name is not None:
            record = self._store.read(name)
            if record is not None and record.instance_id == instance_id:
                return record
        for record in self._store.all():
            self._id_to_name[record.instance_id] = record.name
            if record.instance_id == instance_id:
                return record
        raise InstanceNotFound(f"no process replica {instance_id!r} on node {self.node_name}")

    def _observe(self, record: ReplicaRecord) -> tuple[InstanceState, int | None]:
        """``(state, exit code)`` of a record, checking the pid still is *that* process."""
        if record.exit_code is not None:
            return InstanceState.EXITED, record.exit_code
        if record.boot_id != self._boot_id:
            return InstanceState.EXITED, None
        stat = _proc.read_stat(record.pid)
        if stat is not None and stat.start_ticks == record.start_ticks and not stat.is_dead:
            return InstanceState.RUNNING, None
        # Gone, a zombie, or the pid now belongs to someone else. If it was our child the
        # waiter may be between reaping it and writing its code: wait for that.
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(record.instance_id)
        if child is not None:
            child.done.wait(1.0)
        fresh = self._store.read(record.name)
        return InstanceState.EXITED, fresh.exit_code if fresh is not None else None

    def _to_instance(self, record: ReplicaRecord) -> Instance:
        return self._instance_of(record, *self._observe(record))

    def _instance_of(
        self, record: ReplicaRecord, state: InstanceState, exit_code: int | None
    ) -> Instance:
        ended = self._ended(record) if state is InstanceState.EXITED else None
        return Instance(
            id=record.instance_id,
            name=record.name,
            node=record.labels.get(LABEL_NODE, self.node_name),
            state=state,
            labels=dict(record.labels),
            ports=tuple(
                PortBinding(p.name, p.container_port, p.host_ip, p.host_port) for p in record.ports
            ),
            exit_code=exit_code,
            started_at=record.created_at,
            image=None,
            exit_reason=self._exit_reason_of(ended, record, state, exit_code),
            finished_at=None if ended is None else ended.exited_at,
        )

    def _ended(self, record: ReplicaRecord) -> ReplicaRecord:
        """The record of an exited replica as its reaper last wrote it (exit reason and
        time), read again when the listing's copy predates the exit."""
        if record.exit_reason is not None and record.exited_at is not None:
            return record
        return self._store.read(record.name) or record

    def _exit_reason_of(
        self,
        fresh: ReplicaRecord | None,
        record: ReplicaRecord,
        state: InstanceState,
        exit_code: int | None,
    ) -> str | None:
        if state is not InstanceState.EXITED:
            return None
        if fresh is not None and fresh.exit_reason is not None:
            return fresh.exit_reason
        # Exited while no daemon was its parent: the code is lost, an OOM kill is not.
        tree = self.cgroups
        if record.cgroup is not None and tree is not None and tree.oom_kills(record.cgroup):
            return "OOMKilled"
        return None if exit_code is None else f"exit {exit_code}"

    def _retain(self, record: ReplicaRecord, final: Instance) -> None:
        """Keep the end of the replica's output and how it ended (never its env)."""
        cluster = record.labels.get(LABEL_CLUSTER)
        service = record.labels.get(LABEL_SERVICE)
        if not cluster or not service:
            return
        folder = self._store.folder(record.name)
        if (folder / OUTPUT_FILE).exists():
            output, truncated = tail_file(folder / OUTPUT_FILE)
        else:
            output, truncated = (
                "".join(line + "\n" for line in self._tail(record.name, 2000)),
                False,
            )
        fresh = self._store.read(record.name) or record
        entry = RetainedLog(
            name=record.name,
            replica=record.labels.get(LABEL_REPLICA, record.name),
            service=service,
            node=self.node_name,
            instance_id=record.instance_id,
            revision=record.labels.get(LABEL_REVISION),
            exit_code=final.exit_code,
            exit_reason=final.exit_reason,
            started_at=record.created_at or None,
            finished_at=fresh.exited_at,
            removed_at=time.time(),
            output=output,
            truncated=truncated,
        )
        try:
            self._retained.keep(cluster, entry)
        except OSError as exc:  # the replica goes anyway: losing its tail is the lesser harm
            log.warning(
                "node %s: cannot keep the output of %s: %s", self.node_name, record.name, exc
            )

    def _signal_group(self, record: ReplicaRecord, sig: signal.Signals) -> None:
        # The group id is the leader's pid (start_new_session) and a session leader cannot
        # leave its group, so this reaches the replica and whatever it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)

    def _kill_stragglers(self, record: ReplicaRecord) -> None:
        """SIGKILL group members that outlived their leader (a container dies whole, too).

        With a cgroup, everything in it (even a process that left the process group).
        Otherwise: while the group has members the kernel cannot hand its id (the
        leader's pid) to a new process, so members found under that id are ours, unless
        the pid is alive as *another* process already (recycled before we got here).
        """
        tree = self.cgroups
        if record.cgroup is not None and tree is not None:
            tree.kill(record.cgroup)
            return
        leader = _proc.read_stat(record.pid)
        if leader is not None and leader.start_ticks != record.start_ticks:
            return
        if _proc.group_members(record.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)

    def _wait_gone(self, record: ReplicaRecord, timeout: float) -> bool:
        """Wait until the leader has exited (reaped, zombie, or pid recycled)."""
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(record.instance_id)
        if child is not None:
            return child.done.wait(timeout)
        deadline = time.monotonic() + timeout
        while True:
            stat = _proc.read_stat(record.pid)
            if stat is None or stat.start_ticks != record.start_ticks or stat.is_dead:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)

    def _group_ticks(self, pgrp: int) -> tuple[int, int]:
        members = _proc.group_members(pgrp)
        ticks = sum(m.utime + m.stime for m in members)
        rss = sum(m.rss_pages for m in members) * _proc.PAGE_SIZE
        return ticks, rss

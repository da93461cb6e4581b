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
* **Memory.** ``memory_limit`` becomes ``RLIMIT_AS`` (virtual address space), applied with
  ``prlimit(2)`` on the child right after it was spawned (``preexec_fn`` is unsafe in a
  threaded daemon). So: allocations the program makes in the first instant, before the
  limit lands, are not limited; the limit is per process (children inherit their own copy,
  not a shared budget); and it limits *virtual* memory, not RSS, so runtimes that reserve
  large address ranges (JVM, Go, some allocators) need a generous limit. An allocation
  beyond it fails (``MemoryError``/``ENOMEM``): nothing is OOM-killed.
* **CPU.** ``cpu_limit`` is **not** enforced (no cgroups here); it is recorded only.
* **Ports.** Each port is an ephemeral free port on ``address`` found by binding port 0;
  it is released before the replica starts, so another program could take it in between
  (the replica then fails to bind and exits; the reconciler replaces it).
* **Environment.** ``PATH``, ``HOME`` and ``LANG`` of the daemon, then ``spec.env``, then
  ``PORT`` and ``PORT_<NAME>`` (these win: they must match the allocated ports).
* **Working directory.** ``spec.working_dir`` is resolved (symlinks followed) against the
  operator-allowed root ``workdir``; anything outside is refused with
  :class:`WorkingDirOutsideRoot`.
* **Logs.** ``stdout.log`` and ``stderr.log`` are appended by the replica itself (no pump
  thread). Two files cannot be interleaved in time order, so :meth:`ProcessRuntime.logs`
  reads them as "all of stdout, then all of stderr" and returns the last ``tail`` lines of
  that (like ``docker logs --tail``, ``tail`` counts lines in total): under a tight
  ``tail`` the stderr lines win, which is usually what one tails for.
  :meth:`ProcessRuntime.remove` deletes the logs with the record, like ``docker rm``.
* **Usage.** cpu% is the utime+stime delta of the whole process group since the previous
  :meth:`usage` call on this runtime object (the first call samples over 100 ms); memory is
  the summed RSS of the group.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gitorch.errors import InstanceNotFound, ReplicaStartFailed, RuntimeDriverError
from gitorch.runtime import _proc
from gitorch.runtime._proc_reaper import REAPER
from gitorch.runtime._proc_store import (
    STDERR_FILE,
    STDOUT_FILE,
    PortRecord,
    RecordStore,
    ReplicaRecord,
)
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    LABEL_NODE,
    Instance,
    InstanceState,
    NodeInfo,
    PortBinding,
    PortRequest,
    Probe,
    ProbeResult,
    ReplicaSpec,
    ResourceUsage,
)
from gitorch.runtime.probes import http_check, tcp_check

#: Environment variable every replica gets: its name, so an unrecorded one can be found.
REPLICA_MARKER = "GITORCH_REPLICA"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_ID_RE = re.compile(r"^(\d+)-(\d+)$")
#: How long stop/remove wait for a SIGKILLed group leader to disappear.
_KILL_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.01
_FIRST_USAGE_SAMPLE_SECONDS = 0.1


class WorkingDirOutsideRoot(ReplicaStartFailed):
    """``working_dir`` resolves outside the root the operator allowed (``workdir``)."""


class ReplicaStopFailed(RuntimeDriverError):
    """A replica did not die even after SIGKILL (e.g. stuck in uninterruptible I/O)."""


@dataclass
class _Child:
    """A replica this Python process spawned and therefore must reap."""

    popen: subprocess.Popen[bytes]
    name: str
    done: threading.Event = field(default_factory=threading.Event)


# Children belong to the Python *process*, not to one runtime object: a second
# ProcessRuntime in the same process (a restart in tests) must still see that an exit is
# being recorded, and wait for it, instead of reporting an unknown exit code.
_CHILDREN: dict[str, _Child] = {}
_CHILDREN_LOCK = threading.Lock()


def _exit_status(returncode: int) -> int:
    """Popen's ``-N`` (killed by signal N) as the shell's ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


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
    ) -> None:
        self.node_name = node_name
        self.address = address
        self.state_dir = Path(state_dir)
        self.workdir = (workdir if workdir is not None else Path.cwd()).resolve()
        self._store = RecordStore(self.state_dir)
        self._creating: set[str] = set()  # names between claim and first record write
        self._boot_id = _proc.boot_id()
        self._id_to_name: dict[str, str] = {}
        self._cpu_samples: dict[str, tuple[float, int]] = {}

    # -- capacity ---------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        """This machine's cpus (those we may run on) and ``MemTotal``; always ready."""
        return NodeInfo(
            name=self.node_name,
            driver=self.driver,
            ready=True,
            cpu_cores=float(len(os.sched_getaffinity(0))),
            memory_bytes=_proc.mem_total_bytes(),
            address=self.address,
        )

    # -- observing --------------------------------------------------------------------

    def reap_orphans(self) -> int:
        """Kill processes whose replica has a folder but no record, and drop the folder.

        A daemon killed between spawning a replica and writing its record leaves such a
        process: never reported, so nothing relies on it. Only the daemon that owns the
        state directory may call this (read-only commands must not), and only for folders
        no create() of this object is filling right now. Returns how many were killed.
        """
        killed = 0
        pending = [
            n
            for n in self._store.names()
            if self._store.read(n) is None and n not in self._creating
        ]
        if not pending:
            return 0
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
        return killed

    def list_instances(self, cluster: str) -> list[Instance]:
        """Every recorded replica of ``cluster``; recycled pids show as ``EXITED``."""
        instances = []
        for record in self._store.all():
            if record.labels.get(LABEL_CLUSTER) != cluster:
                continue
            self._id_to_name[record.instance_id] = record.name
            instances.append(self._to_instance(record))
        return instances

    def inspect(self, instance_id: str) -> Instance:
        return self._to_instance(self._find(instance_id))

    def logs(self, instance_id: str, tail: int = 100) -> str:
        """The last ``tail`` lines of "stdout, then stderr" (see the module docstring)."""
        record = self._find(instance_id)
        if tail <= 0:
            return ""
        folder = self._store.folder(record.name)
        lines = _proc.tail_lines(folder / STDOUT_FILE, tail)
        lines += _proc.tail_lines(folder / STDERR_FILE, tail)
        return "".join(line + "\n" for line in lines[-tail:])

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

    # -- changing ---------------------------------------------------------------------

    def create(self, spec: ReplicaSpec, cluster: str) -> Instance:
        """Spawn the replica and return it running (or already exited, if it was quick)."""
        if not _NAME_RE.match(spec.name):
            raise ReplicaStartFailed(
                f"replica name {spec.name!r} is not usable as a folder name "
                "(letters, digits, '.', '_' and '-' only)"
            )
        if not spec.command:
            raise ReplicaStartFailed(f"replica {spec.name}: the process driver needs a command")
        cwd = self._resolve_working_dir(spec)
        try:
            folder = self._store.claim(spec.name)
        except FileExistsError:
            raise ReplicaStartFailed(
                f"replica {spec.name} already exists on node {self.node_name}: remove it first"
            ) from None
        self._creating.add(spec.name)
        try:
            return self._spawn(spec, cluster, cwd, folder)
        except BaseException:
            self._store.delete(spec.name)
            raise
        finally:
            self._creating.discard(spec.name)

    def stop(self, instance_id: str, grace_seconds: float) -> None:
        """SIGTERM the group, wait ``grace_seconds`` for the leader, then SIGKILL the group."""
        record = self._find(instance_id)
        if self._observe(record)[0] is InstanceState.RUNNING:
            self._signal_group(record, signal.SIGTERM)
            if not self._wait_gone(record, grace_seconds):
                self._signal_group(record, signal.SIGKILL)
                if not self._wait_gone(record, _KILL_WAIT_SECONDS):
                    raise ReplicaStopFailed(
                        f"replica {record.name} (pid {record.pid}) survived SIGKILL"
                    )
        self._kill_stragglers(record)

    def remove(self, instance_id: str) -> None:
        """SIGKILL the replica if it runs, then delete its record and its logs."""
        record = self._find(instance_id)
        if self._observe(record)[0] is InstanceState.RUNNING:
            self._signal_group(record, signal.SIGKILL)
            if not self._wait_gone(record, _KILL_WAIT_SECONDS):
                raise ReplicaStopFailed(
                    f"replica {record.name} (pid {record.pid}) survived SIGKILL"
                )
        self._kill_stragglers(record)
        self._store.delete(record.name)
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
                env=record.env,
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

    def _spawn(self, spec: ReplicaSpec, cluster: str, cwd: Path, folder: Path) -> Instance:
        ports = self._allocate_ports(spec.ports)
        # The marker lets a later daemon find this process if we die before its record
        # is written (see reap_orphans).
        env = {**self._environment(spec, ports), REPLICA_MARKER: spec.name}
        argv = [*spec.command, *spec.args]
        labels = {**spec.labels, LABEL_CLUSTER: cluster, LABEL_NODE: self.node_name}
        with open(folder / STDOUT_FILE, "ab") as out, open(folder / STDERR_FILE, "ab") as err:
            try:
                # Running the manifest's argv is this driver's job; no shell is involved.
                popen = subprocess.Popen(  # noqa: S603
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # own session + group: signals reach all of it
                    close_fds=True,
                )
            except (OSError, ValueError) as exc:
                raise ReplicaStartFailed(
                    f"replica {spec.name}: cannot start {argv[0]}: {exc}"
                ) from exc
        started_at = time.time()
        try:
            if spec.memory_limit is not None:
                limit = int(spec.memory_limit)
                with contextlib.suppress(ProcessLookupError):  # already gone: nothing to limit
                    resource.prlimit(popen.pid, resource.RLIMIT_AS, (limit, limit))
            # Popen returned after exec: the child is unreaped until our waiter runs, so
            # its /proc entry (maybe a zombie) is there to read the start time from.
            stat = _proc.read_stat(popen.pid)
            if stat is None:
                raise ReplicaStartFailed(f"replica {spec.name}: /proc/{popen.pid} vanished")
        except (OSError, ReplicaStartFailed) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            if isinstance(exc, ReplicaStartFailed):
                raise
            raise ReplicaStartFailed(f"replica {spec.name}: cannot set limits: {exc}") from exc
        record = ReplicaRecord(
            name=spec.name,
            pid=popen.pid,
            start_ticks=stat.start_ticks,
            boot_id=self._boot_id,
            argv=argv,
            cmdline=_proc.read_cmdline(popen.pid) or [],
            cwd=str(cwd),
            env=env,
            labels=labels,
            ports=ports,
            created_at=started_at,
            memory_limit=spec.memory_limit,
            cpu_limit=spec.cpu_limit,
            stop_grace_seconds=spec.stop_grace_seconds,
        )
        self._store.write(record)
        self._id_to_name[record.instance_id] = record.name
        self._adopt_child(record, popen)
        return self._to_instance(record)

    def _adopt_child(self, record: ReplicaRecord, popen: subprocess.Popen[bytes]) -> None:
        instance_id = record.instance_id
        child = _Child(popen=popen, name=record.name)
        with _CHILDREN_LOCK:
            _CHILDREN[instance_id] = child
        REAPER.watch(popen, lambda returncode: self._record_exit(instance_id, child, returncode))

    def _record_exit(self, instance_id: str, child: _Child, returncode: int) -> None:
        """Called by the reaper once the child is reaped. Order matters: whoever no longer
        finds the child in ``_CHILDREN`` must find its exit code on disk."""
        try:
            self._store.record_exit(child.name, instance_id, _exit_status(returncode), time.time())
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.pop(instance_id, None)
            child.done.set()

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
        state, exit_code = self._observe(record)
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
        )

    def _signal_group(self, record: ReplicaRecord, sig: signal.Signals) -> None:
        # The group id is the leader's pid (start_new_session) and a session leader cannot
        # leave its group, so this reaches the replica and whatever it started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)

    def _kill_stragglers(self, record: ReplicaRecord) -> None:
        """SIGKILL group members that outlived their leader (a container dies whole, too).

        While the group has members the kernel cannot hand its id (the leader's pid) to a
        new process, so members found under that id are ours, unless the pid is alive as
        *another* process already (recycled before we got here): then hands off.
        """
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

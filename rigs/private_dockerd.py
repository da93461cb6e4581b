"""A Docker engine of the tests' own, which they may SIGKILL, SIGSTOP and restart at will.

Used by the runtime tests (engine loss, a hung engine, a tcp endpoint), the multi-node
tests (a docker node that dies) and the chaos soak (``bench/soak.py --runtime docker``: an
engine restarted under load). It is a containerd + dockerd pair on its own socket, data
root, exec root and host bridge, so nothing done to it touches the main engine the rest of
the suite uses. ``rigs/`` is on pytest's ``pythonpath`` (and the soak puts it on its
``sys.path``): import it as ``private_dockerd``.

Every failure to set it up raises :class:`EngineError`, an AssertionError: a missing tool
or an engine that does not start is a test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from listen_ports import free_port

#: The main engine, where the images to copy over come from (there is no registry).
MAIN_ENDPOINT = "unix:///var/run/docker.sock"

_TOOLS = ("dockerd", "containerd", "docker", "ip")

CONTAINERD_CONFIG = """\
version = 2
root = "{root}/ctd/root"
state = "{root}/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/ctd/ctd.sock"
[ttrpc]
  address = "{root}/ctd/ctd.sock.ttrpc"
[debug]
  address = "{root}/ctd/debug.sock"
"""


class EngineError(AssertionError):
    """The private engine could not be set up or does not answer (a failure, not a skip)."""


def copy_images(endpoint: str, *images: str) -> None:
    """Copy ``images`` from the main engine to the engine at ``endpoint`` (``docker save |
    docker load``: there is no registry); :class:`EngineError` when it fails."""
    save = subprocess.Popen(
        ["docker", "-H", MAIN_ENDPOINT, "save", *images], stdout=subprocess.PIPE
    )
    load = subprocess.run(
        ["docker", "-H", endpoint, "load", "-q"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert save.stdout is not None
    save.stdout.close()
    if save.wait(timeout=120) != 0 or load.returncode != 0:
        raise EngineError(f"loading {', '.join(images)} into {endpoint} failed: {load.stderr}")


def start_containerd(
    root: Path, log: IO[bytes], prefix: Sequence[str] = (), timeout: float = 30
) -> subprocess.Popen[bytes]:
    """containerd with its state under ``root/ctd`` (``prefix``: e.g. nsenter, to run it
    in a network namespace), once its socket exists; :class:`EngineError` otherwise."""
    (root / "ctd").mkdir(parents=True, exist_ok=True)
    config = root / "ctd" / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(root=root))
    proc = subprocess.Popen(
        [*prefix, "containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + timeout
    while not (root / "ctd" / "ctd.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            log.flush()
            tail = (root / "containerd.log").read_text(errors="replace")[-3000:]
            raise EngineError(f"containerd in {root} did not start:\n{tail}")
        time.sleep(0.02)
    return proc


def dockerd_argv(root: Path, bridge: str, hosts: Sequence[str], pidfile: str = "pid") -> list[str]:
    """dockerd on ``root``'s containerd, data and exec roots and ``bridge``, listening on
    ``hosts`` (``--host=...`` and TLS flags), without iptables, masquerading or ip
    forwarding (published ports go through docker-proxy), on vfs (no overlay mounts)."""
    return [
        "dockerd",
        *hosts,
        f"--containerd={root}/ctd/ctd.sock",
        f"--data-root={root}/data",
        f"--exec-root={root}/exec",
        f"--pidfile={root}/{pidfile}",
        f"--bridge={bridge}",
        "--iptables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--storage-driver=vfs",
    ]


class EngineLogs:
    """The log files of an engine's processes under ``root``."""

    root: Path
    _logs: list[IO[bytes]]

    def _log(self, name: str) -> IO[bytes]:
        handle = open(self.root / name, "ab")  # noqa: SIM115 (closed with the engine)
        self._logs.append(handle)
        return handle

    def tail(self, name: str = "dockerd.log", chars: int = 3000) -> str:
        """The end of one of its logs (dockerd.log, containerd.log), for failure messages."""
        try:
            return (self.root / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _stop_processes(self, *procs: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM each (SIGKILL after 20 s), in order; then close the logs."""
        for proc in procs:
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for handle in self._logs:
            handle.close()
        self._logs.clear()


def unmount_below(root: Path) -> None:
    """Unmount what an engine left mounted under ``root`` (a killed dockerd never does)."""
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{root}/") or line.split()[1] == str(root)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def free_subnet() -> str:
    """A /24 of 198.18.0.0/15 that no interface of this host uses, as ``198.1x.N.1/24``.

    That range is reserved for benchmarks (RFC 2544), so it clashes with no real network;
    checking the host's addresses keeps two private engines alive at once (the runtime
    and the multi-node tests in one run, or two runs side by side) on distinct subnets.
    """
    shown = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    taken = {
        ".".join(word.split("/")[0].split(".")[:3])
        for line in shown.splitlines()
        for word in line.split()[3:4]
    }
    candidates = [f"198.{b}.{c}" for b in (18, 19) for c in range(256)]
    random.shuffle(candidates)
    for prefix in candidates:
        if prefix not in taken:
            return f"{prefix}.1/24"
    raise EngineError("no free /24 left in 198.18.0.0/15 for the private engine's bridge")


@dataclass
class PrivateEngine(EngineLogs):
    """containerd + dockerd of our own, on a bridge of our own.

    containerd runs apart from dockerd (as under systemd): a dockerd managing its own
    containerd takes it down when killed, and the next one then cannot start while the
    old shims live; this way a SIGKILLed dockerd leaves containerd alive and a new dockerd
    starts at once. Not ``--bridge=none``: a dockerd started with it deletes docker0, which
    belongs to the main engine. No iptables, masquerading or ip forwarding (published
    ports go through docker-proxy), vfs storage (no overlay mounts to leak). Paths are
    short: containerd's socket paths must fit in 108 bytes.

    ``prefix`` names the temporary root (``/tmp/<prefix>…``) and the bridge, so a leftover
    shows which suite made it; ``tcp`` also serves the API on a free 127.0.0.1 port.
    """

    prefix: str = "pd"
    tcp: bool = False
    extra_args: tuple[str, ...] = ()  # more dockerd flags (the soak: --live-restore)
    root: Path = field(init=False)
    bridge: str = field(init=False)
    tcp_port: int | None = field(init=False, default=None)
    dockerd: subprocess.Popen[bytes] | None = field(init=False, default=None)
    containerd: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _logs: list[IO[bytes]] = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        self.bridge = f"{self.prefix}{uuid.uuid4().hex[:6]}"  # at most 15 characters
        if self.tcp:
            self.tcp_port = free_port()

    # -- where it answers ----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def tcp_endpoint(self) -> str:
        if self.tcp_port is None:
            raise EngineError("this private engine was made without tcp=True")
        return f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def running(self) -> bool:
        """dockerd is alive (it may still be paused)."""
        return self.dockerd is not None and self.dockerd.poll() is None

    def answers(self, timeout: float = 0.5) -> bool:
        """``GET /_ping`` on the unix socket gets a 200 within ``timeout`` seconds.

        Spoken directly rather than through the docker CLI or SDK: it is polled every few
        milliseconds while dockerd starts.
        """
        reply = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.root / "docker.sock"))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                while b"\r\n" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply.split(b"\r\n", 1)[0].split()[1:2] == [b"200"]

    # -- life cycle ------------------------------------------------------------------------

    def boot(self) -> None:
        """Check the tools, make the bridge, start containerd, then dockerd."""
        for tool in _TOOLS:
            if shutil.which(tool) is None:
                raise EngineError(f"{tool} is not installed (apt-get install docker.io iproute2)")
        self._make_bridge()
        self.containerd = start_containerd(self.root, self._log("containerd.log"))
        self.start()

    def _make_bridge(self) -> None:
        subnet = free_subnet()
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", subnet, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise EngineError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def start(self) -> None:
        """Start dockerd (again, after a kill) and wait until it answers."""
        (self.root / "pid").unlink(missing_ok=True)  # left behind by a SIGKILL
        hosts = [f"--host={self.endpoint}"]
        if self.tcp_port is not None:
            hosts.append(f"--host={self.tcp_endpoint}")
        self.dockerd = subprocess.Popen(
            [*dockerd_argv(self.root, self.bridge, hosts), *self.extra_args],
            stdout=self._log("dockerd.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.answers():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"the private dockerd did not start:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL dockerd: it stops answering (its containers' published ports close too)."""
        assert self.dockerd is not None, "the private engine was never started"
        self.dockerd.kill()
        self.dockerd.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP dockerd and wait until every thread is stopped (delivery is async)."""
        assert self.dockerd is not None, "the private engine was never started"
        self.dockerd.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise EngineError("dockerd did not stop after SIGSTOP")
            time.sleep(0.01)

    def _all_threads_stopped(self) -> bool:
        assert self.dockerd is not None
        for stat in Path(f"/proc/{self.dockerd.pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread may exit meanwhile
                # The state is the first field after the ")" closing the command name.
                if stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
                    return False
        return True

    def resume(self) -> None:
        """SIGCONT dockerd (harmless when it is not paused)."""
        if self.running:
            assert self.dockerd is not None
            self.dockerd.send_signal(signal.SIGCONT)

    def ensure_running(self) -> None:
        """Answering again whatever an earlier test did: restarted if killed, resumed if paused."""
        if not self.running:
            self.start()
        self.resume()

    # -- images and containers ------------------------------------------------------------

    def _docker(
        self, *args: str, timeout: float, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine."""
        return subprocess.run(
            ["docker", "-H", self.endpoint, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def load_image(self, *images: str) -> None:
        """Copy ``images`` from the main engine (``docker save | docker load``)."""
        copy_images(self.endpoint, *images)

    def containers(self, cluster: str) -> list[dict[str, Any]]:
        """Every container of gitorch ``cluster`` here, running or not (``docker ps -a``)."""
        done = self._docker(
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            f"label=dev.gitorch.cluster={cluster}",
            "--format",
            "{{json .}}",
            timeout=20,
            check=True,
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def remove_all(self) -> None:
        """Force-remove every container on this engine (nothing when dockerd is down)."""
        if not self.running:
            return
        ids = self._docker("ps", "-aq", timeout=20).stdout.split()
        if ids:
            self._docker("rm", "-f", *ids, timeout=60)

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Remove the containers, stop dockerd and containerd, unmount, delete files and bridge."""
        self.resume()  # a paused dockerd would neither answer nor handle SIGTERM
        with contextlib.suppress(Exception):  # best effort: the rest must run regardless
            self.remove_all()
        self._stop_processes(self.dockerd, self.containerd)
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from listen_ports import free_port

#: The main engine, where the images to copy over come from (there is no registry).
MAIN_ENDPOINT = "unix:///var/run/docker.sock"

_TOOLS = ("dockerd", "containerd", "docker", "ip")

_CONTAINERD_CONFIG = """\
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


def _free_subnet() -> str:
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
class PrivateEngine:
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

    # -- its files ---------------------------------------------------------------------------

    def _log(self, name: str) -> IO[bytes]:
        handle = open(self.root / name, "ab")  # noqa: SIM115 (closed in shutdown)
        self._logs.append(handle)
        return handle

    def tail(self, name: str = "dockerd.log", chars: int = 3000) -> str:
        """The end of one of its logs (dockerd.log, containerd.log), for failure messages."""
        try:
            return (self.root / name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- life cycle ------------------------------------------------------------------------

    def boot(self) -> None:
        """Check the tools, make the bridge, start containerd, then dockerd."""
        for tool in _TOOLS:
            if shutil.which(tool) is None:
                raise EngineError(f"{tool} is not installed (apt-get install docker.io iproute2)")
        self._make_bridge()
        (self.root / "ctd").mkdir()
        config = self.root / "ctd" / "config.toml"
        config.write_text(_CONTAINERD_CONFIG.format(root=self.root))
        self.containerd = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=self._log("containerd.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (self.root / "ctd" / "ctd.sock").exists():
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(
                    f"the private containerd did not start:\n{self.tail('containerd.log')}"
                )
            time.sleep(0.02)
        self.start()

    def _make_bridge(self) -> None:
        subnet = _free_subnet()
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
            [
                "dockerd",
                *hosts,
                f"--containerd={self.root}/ctd/ctd.sock",
                f"--data-root={self.root}/data",
                f"--exec-root={self.root}/exec",
                f"--pidfile={self.root}/pid",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--storage-driver=vfs",
            ],
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
        save = subprocess.Popen(
            ["docker", "-H", MAIN_ENDPOINT, "save", *images], stdout=subprocess.PIPE
        )
        load = subprocess.run(
            ["docker", "-H", self.endpoint, "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(timeout=60) != 0 or load.returncode != 0:
            raise EngineError(
                f"loading {', '.join(images)} into the private engine failed: {load.stderr}"
            )

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
        for proc in (self.dockerd, self.containerd):
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
        # dockerd bind-mounts parts of its data root; a killed one never unmounts them.
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

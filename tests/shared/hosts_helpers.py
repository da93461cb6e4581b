"""A rig of test hosts: network namespaces joined by a switch, each running its own Docker
engine over TLS, one also reachable over ssh. Any test can use it (tests/shared is on
pytest's ``pythonpath``); tests/multihost/conftest.py holds the session fixture.

The layout (``P`` is a free /24 of 198.18.0.0/15, picked at boot, e.g. 198.18.247)::

      outside (the root namespace: pytest, gitorch daemon, clients)  P.1
         |  veth
      [ switch namespace: bridge "sw" ]   <- a namespace of its own: the root namespace's
         |  veth        |  veth       |      FORWARD chain (Docker's, policy DROP, with
      h1 .2           h2 .3         h3 .4    br_netfilter on) would drop bridged traffic
      containerd     containerd     containerd
      dockerd        dockerd        dockerd       tcp://P.k:2376, TLS (client certs)
      dbr0 10.77.1   dbr0 10.77.2   dbr0 10.77.3  (each engine's bridge, a subnet of its own)
                                    + sshd on h3 (ssh://root@P.4)

* Each host is a network namespace with one interface on the switch and its own address:
  a published port answers at that address only (not on the root namespace's loopback),
  from outside and from the other hosts. Containers reach their host at its address (the
  bridge's gateway routes to it: it is the host's own address).
* Its engine is containerd + dockerd *inside* the namespace (``nsenter --net=``, not
  ``ip netns exec``, which remounts /sys and dockerd dies without cgroups): a container
  with host networking (the ingress) then shares the host's namespace, as on a real host.
  Engines listen on tcp with TLS (a CA and certificates the rig makes with openssl, server
  certificates with ``subjectAltName=IP:<address>``, ``--tlsverify``: client certificates
  required) and on a unix socket in the rig's folder for the tests' own docker CLI.
  Without TLS, dockerd delays its start by 15 s on a tcp listener.
* ``RigHost.cut()`` sets the host's port on the switch down: the host is partitioned from
  everyone (outside and the other hosts) while it and its replicas keep running;
  ``RigHost.mend()`` brings it back.
* Images come from the main engine (there is no registry): ``docker save | docker load``.
* h3 also runs Debian's sshd on its address; the key the rig makes may only run ``docker
  system dial-stdio`` against h3's engine (a forced command), which is all that Docker's
  ssh transport runs.

Every name the rig makes starts with its prefix (``gtr`` + 5 hex digits): namespaces
``gtrXXXXX-h1``, its folder ``/tmp/gtrXXXXX``. :meth:`Rig.shutdown` removes everything
(containers, engines, sshd, mounts, namespaces, folder) and is safe to call twice; a rig
whose pytest died (SIGKILL) is swept by the next :func:`sweep_dead_rigs`.

By hand (as root, from the repository root)::

    PYTHONPATH=$PWD:rigs:tests/shared python3 -m hosts_helpers up   # prints the rig
    PYTHONPATH=$PWD:rigs:tests/shared python3 -m hosts_helpers down /tmp/gtrXXXXX

Every failure to set it up raises :class:`RigError`, an AssertionError: a missing tool is a
test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from private_dockerd import (
    EngineError,
    EngineLogs,
    copy_images,
    dockerd_argv,
    free_subnet,
    start_containerd,
    unmount_below,
)

#: The engines' TLS port.
DOCKER_TLS_PORT = 2376
#: The host that also answers over ssh (index into Rig.hosts).
SSH_HOST = 2

_TOOLS = ("ip", "nsenter", "dockerd", "containerd", "docker", "openssl", "ssh-keygen")
_PREFIX = "gtr"
_OWNER_FILE = "owner.pid"

_SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {root}/ssh/host_ed25519
PidFile {root}/ssh/sshd.pid
AuthorizedKeysFile {root}/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
LogLevel VERBOSE
"""


class RigError(AssertionError):
    """The rig could not be set up or does not answer (a failure, not a skip)."""


def _run(argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RigError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_prefix() -> str:
    """A /24 of 198.18.0.0/15 that no interface of the root namespace uses ("198.19.N")."""
    return free_subnet().rsplit(".", 1)[0]  # the same rule as the private engines'


# -- TLS and ssh material -----------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """A client's view of the engines' TLS: the CA, and a client certificate and key."""

    ca: Path
    cert: Path
    key: Path
    wrong_ca: Path  # a CA that signed none of the engines' certificates


def _openssl_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}-key.pem", folder / f"{name}.pem"
    _run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ]
    )  # fmt: skip
    return cert, key


def _openssl_leaf(
    folder: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    key, csr, cert = folder / f"{name}-key.pem", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions + "\nauthorityKeyIdentifier=keyid\n", encoding="ascii")
    _run(
        [
            "openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        ]
    )  # fmt: skip
    _run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext),
        ]
    )  # fmt: skip
    csr.unlink()
    return cert, key


@dataclass(frozen=True)
class SSHAccess:
    """What a client needs to reach the ssh host: user, address, key, known_hosts."""

    user: str
    address: str
    identity: Path
    known_hosts: Path

    @property
    def endpoint(self) -> str:
        return f"ssh://{self.user}@{self.address}"


# -- one host -------------------------------------------------------------------------------


@dataclass
class RigHost(EngineLogs):
    """One host of the rig: a namespace, its engine, its address (see the module docstring)."""

    name: str  # h1, h2, h3
    netns: str
    address: str
    root: Path
    switch_port: str  # its veth in the switch namespace (what cut() sets down)
    switch_netns: str
    containerd: subprocess.Popen[bytes] | None = None
    dockerd: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    _logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    # -- where it answers ---------------------------------------------------------------

    @property
    def tcp_endpoint(self) -> str:
        """The engine over TLS, as a gitorch Node names it."""
        return f"tcp://{self.address}:{DOCKER_TLS_PORT}"

    @property
    def unix_endpoint(self) -> str:
        """The engine's unix socket, for the tests' own docker CLI (not for gitorch)."""
        return f"unix://{self.root}/docker.sock"

    def nsenter(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's network namespace."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on this host (its network namespace), as a client there would."""
        return subprocess.run(
            self.nsenter(*argv), capture_output=True, text=True, timeout=timeout, check=False
        )

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this host's engine (its unix socket)."""
        return subprocess.run(
            ["docker", "-H", self.unix_endpoint, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- the link -------------------------------------------------------------------------

    def cut(self) -> None:
        """Partition this host: its port on the switch goes down."""
        _run(["ip", "-n", self.switch_netns, "link", "set", self.switch_port, "down"])

    def mend(self) -> None:
        """Bring its link back."""
        _run(["ip", "-n", self.switch_netns, "link", "set", self.switch_port, "up"])

    # -- its engine -----------------------------------------------------------------------

    def start_engine(self, tls_dir: Path) -> None:
        """containerd, then dockerd with TLS, both inside the namespace."""
        try:
            self.containerd = start_containerd(
                self.root, self._log("containerd.log"), self.nsenter()
            )
        except EngineError as exc:
            raise RigError(f"{self.name}: {exc}") from exc
        tls = [
            f"--host={self.unix_endpoint}",
            f"--host=tcp://{self.address}:{DOCKER_TLS_PORT}",
            "--tlsverify",
            f"--tlscacert={tls_dir / 'ca.pem'}",
            f"--tlscert={tls_dir / f'{self.name}.pem'}",
            f"--tlskey={tls_dir / f'{self.name}-key.pem'}",
        ]
        self.dockerd = subprocess.Popen(
            self.nsenter(*dockerd_argv(self.root, "dbr0", tls, pidfile="docker.pid")),
            stdout=self._log("dockerd.log"),
            stderr=subprocess.STDOUT,
        )

    def wait_engine(self, timeout: float = 60) -> None:
        assert self.dockerd is not None
        deadline = time.monotonic() + timeout
        while self.docker("version", "--format", "{{.Server.Version}}", timeout=10).returncode:
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise RigError(f"{self.name}: dockerd did not start:\n{self.tail()}")
            time.sleep(0.1)

    def start_sshd(self, ssh_dir: Path) -> None:
        config = ssh_dir / "sshd_config"
        config.write_text(_SSHD_CONFIG.format(address=self.address, root=self.root.parent))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.sshd = subprocess.Popen(
            self.nsenter("/usr/sbin/sshd", "-D", "-e", "-f", str(config)),
            stdout=self._log("sshd.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while self.run("bash", "-c", f"exec 3<>/dev/tcp/{self.address}/22", timeout=5).returncode:
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise RigError(f"{self.name}: sshd did not start:\n{self.tail('sshd.log')}")
            time.sleep(0.05)

    def load_images(self, *images: str) -> None:
        """Copy ``images`` from the main engine (``docker save | docker load``)."""
        try:
            copy_images(self.unix_endpoint, *images)
        except EngineError as exc:
            raise RigError(f"{self.name}: {exc}") from exc

    def containers(self, label: str | None = None) -> list[dict[str, Any]]:
        """Containers on this host (``docker ps -a``), optionally with ``label``."""
        args = ["ps", "-a", "--no-trunc", "--format", "{{json .}}"]
        if label:
            args[3:3] = ["--filter", f"label={label}"]
        done = self.docker(*args, timeout=30)
        if done.returncode != 0:
            raise RigError(f"{self.name}: docker ps failed: {done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def remove_containers(self, label: str | None = None) -> None:
        """Force-remove containers (all, or those with ``label``); quiet when it is down."""
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        with contextlib.suppress(RigError, subprocess.TimeoutExpired):
            ids = [c["ID"] for c in self.containers(label)]
            if ids:
                self.docker("rm", "-f", *ids, timeout=120)

    def stop(self) -> None:
        """Stop sshd, dockerd and containerd (best effort, in that order)."""
        self._stop_processes(self.sshd, self.dockerd, self.containerd)


# -- the rig ---------------------------------------------------------------------------------


@dataclass
class Rig:
    """Three hosts on a switch, engines over TLS, ssh on one (see the module docstring)."""

    count: int = 3
    token: str = field(default_factory=lambda: secrets.token_hex(3)[:5])
    root: Path = field(init=False)
    prefix: str = field(init=False)  # "198.19.N"
    hosts: list[RigHost] = field(default_factory=list)
    tls: TLSFiles | None = None
    ssh: SSHAccess | None = None

    def __post_init__(self) -> None:
        self.root = Path("/tmp") / f"{_PREFIX}{self.token}"
        self.prefix = ""

    @property
    def name(self) -> str:
        return f"{_PREFIX}{self.token}"

    @property
    def switch_netns(self) -> str:
        return f"{self.name}-sw"

    @property
    def outside_address(self) -> str:
        """The root namespace's address on the switch (the daemon's, clients' outside)."""
        return f"{self.prefix}.1"

    @property
    def outside_port(self) -> str:
        return f"{self.name}o"

    # -- boot ------------------------------------------------------------------------------

    def boot(self, images: Iterable[str] = ()) -> None:
        """Make the network, the TLS and ssh material, start every engine, load ``images``."""
        for tool in _TOOLS:
            if shutil.which(tool) is None:
                raise RigError(f"{tool} is not installed (see .ci/run for the packages)")
        self.root.mkdir(mode=0o700)
        (self.root / _OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        self.prefix = _free_prefix()
        self._make_network()
        tls_dir = self._make_tls()
        ssh_dir = self._make_ssh()
        for host in self.hosts:
            host.start_engine(tls_dir)
        for host in self.hosts:  # the engines start side by side
            host.wait_engine()
        self.hosts[SSH_HOST].start_sshd(ssh_dir)
        images = list(images)
        if images:
            for host in self.hosts:
                host.load_images(*images)

    def _make_network(self) -> None:
        sw = self.switch_netns
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", "sw", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "sw", "up"])
        _run(["ip", "-n", sw, "link", "set", "lo", "up"])
        # outside: the root namespace's port on the switch
        _run(["ip", "link", "add", self.outside_port, "type", "veth", "peer", "name", "out",
              "netns", sw])  # fmt: skip
        _run(["ip", "-n", sw, "link", "set", "out", "master", "sw", "up"])
        _run(["ip", "addr", "add", f"{self.outside_address}/24", "dev", self.outside_port])
        _run(["ip", "link", "set", self.outside_port, "up"])
        for index in range(self.count):
            name = f"h{index + 1}"
            host = RigHost(
                name=name,
                netns=f"{self.name}-{name}",
                address=f"{self.prefix}.{index + 2}",
                root=self.root / name,
                switch_port=f"p{name}",
                switch_netns=sw,
            )
            host.root.mkdir()
            ns = host.netns
            _run(["ip", "netns", "add", ns])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                  host.switch_port, "netns", sw])  # fmt: skip
            _run(["ip", "-n", sw, "link", "set", host.switch_port, "master", "sw", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # The engine's bridge: a subnet of its own per host (10.77.k.0/24), as on a fleet.
            _run(["ip", "-n", ns, "link", "add", "dbr0", "type", "bridge"])
            _run(["ip", "-n", ns, "addr", "add", f"10.77.{index + 1}.1/24", "dev", "dbr0"])
            _run(["ip", "-n", ns, "link", "set", "dbr0", "up"])
            self.hosts.append(host)

    def _make_tls(self) -> Path:
        folder = self.root / "tls"
        folder.mkdir(mode=0o700)
        ca = _openssl_ca(folder, "ca")
        for host in self.hosts:
            _openssl_leaf(
                folder,
                host.name,
                ca,
                f"subjectAltName=IP:{host.address}\nextendedKeyUsage=serverAuth",
            )
        cert, key = _openssl_leaf(folder, "client", ca, "extendedKeyUsage=clientAuth")
        wrong, _ = _openssl_ca(folder, "wrong-ca")
        self.tls = TLSFiles(ca=ca[0], cert=cert, key=key, wrong_ca=wrong)
        return folder

    def _make_ssh(self) -> Path:
        folder = self.root / "ssh"
        folder.mkdir(mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_ed25519")])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "client")])
        host = self.hosts[SSH_HOST]
        client_key = (folder / "client.pub").read_text().strip()
        # The key may run one thing: the engine's stdio bridge (what Docker's ssh runs).
        forced = f"docker -H {host.unix_endpoint} system dial-stdio"
        (folder / "authorized_keys").write_text(f'restrict,command="{forced}" {client_key}\n')
        host_key = (folder / "host_ed25519.pub").read_text().split()
        (folder / "known_hosts").write_text(f"{host.address} {host_key[0]} {host_key[1]}\n")
        self.ssh = SSHAccess("root", host.address, folder / "client", folder / "known_hosts")
        return folder

    # -- use ---------------------------------------------------------------------------------

    def host(self, name: str) -> RigHost:
        return next(h for h in self.hosts if h.name == name)

    def remove_cluster(self, cluster: str | None) -> None:
        """Every container of a gitorch cluster on every host (replicas and ingresses)."""
        if not cluster:
            return
        for host in self.hosts:
            host.mend()
            host.remove_containers(f"dev.gitorch.cluster={cluster}")
            host.remove_containers(f"dev.gitorch.ingress={cluster}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                volumes = host.docker(
                    "volume", "ls", "-q", "--filter", f"label=dev.gitorch.cluster={cluster}"
                ).stdout.split()
                ingress = host.docker(
                    "volume", "ls", "-q", "--filter", f"label=dev.gitorch.ingress={cluster}"
                ).stdout.split()
                if volumes or ingress:
                    host.docker("volume", "rm", "-f", *volumes, *ingress)

    def describe(self) -> str:
        lines = [f"rig {self.name} in {self.root} (outside: {self.outside_address})"]
        for host in self.hosts:
            lines.append(
                f"  {host.name}: netns {host.netns}, {host.tcp_endpoint} (TLS), "
                f"docker -H {host.unix_endpoint}"
            )
        if self.tls is not None:
            lines.append(f"  TLS: --tlsverify --tlscacert {self.tls.ca} --tlscert {self.tls.cert} "
                         f"--tlskey {self.tls.key}")  # fmt: skip
        if self.ssh is not None:
            lines.append(f"  ssh: {self.ssh.endpoint} -i {self.ssh.identity} "
                         f"(known_hosts {self.ssh.known_hosts})")  # fmt: skip
        if self.hosts:  # what RigHost.cut() and mend() run
            ports = "|".join(host.switch_port for host in self.hosts)
            lines.append(f"  cut a host off the network: ip -n {self.switch_netns} link set "
                         f"{ports} down (up: back)")  # fmt: skip
        return "\n".join(lines)

    # -- the end ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Remove everything the rig made; safe to call twice, and after a failed boot."""
        for host in self.hosts:
            with contextlib.suppress(RigError):
                host.mend()
            host.remove_containers()
            host.stop()
        _remove_rig(self.root, self.name)


def _remove_rig(root: Path, name: str) -> None:
    """Kill what still runs in the rig's namespaces, unmount and delete its folder, delete
    its namespaces and the root namespace's port (also for a rig whose owner died)."""
    namespaces = [n for n in _netns_names() if n.startswith(f"{name}-")]
    for netns in namespaces:
        for pid in _pids_in(netns):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    # Containers live in namespaces of their own: found by the rig's container ids, in
    # the cgroups the engines made for them (only when an engine died with them running).
    for container in root.glob("h*/data/containers/*"):
        for procs in Path("/sys/fs/cgroup").glob(f"*/docker/{container.name}/cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
    unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)
    for netns in namespaces:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", f"{name}o"], capture_output=True, check=False)


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _pids_in(netns: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def sweep_dead_rigs() -> list[str]:
    """Remove rigs whose owning process is gone (a pytest killed before its teardown)."""
    swept = []
    for root in Path("/tmp").glob(f"{_PREFIX}?????"):
        try:
            owner = int((root / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue
        _remove_rig(root, root.name)
        swept.append(root.name)
    # namespaces whose folder is already gone
    for netns in _netns_names():
        name = netns.split("-", 1)[0]
        ours = netns.startswith(_PREFIX) and len(name) == len(_PREFIX) + 5
        if ours and not (Path("/tmp") / name).exists():
            _remove_rig(Path("/tmp") / name, name)
            swept.append(name)
    return swept


def boot_rig(images: Iterable[str] = ()) -> Rig:
    """A booted rig (a failed boot removes what it made before raising)."""
    sweep_dead_rigs()
    rig = Rig()
    try:
        rig.boot(images)
    except BaseException:
        rig.shutdown()
        raise
    return rig


def _main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        rig = boot_rig(argv[1:])
        # The rig belongs to no process now: `down` removes it.
        (rig.root / _OWNER_FILE).write_text("1\n", encoding="ascii")
        print(rig.describe())
        return 0
    if argv[:1] == ["down"] and len(argv) == 2:
        root = Path(argv[1])
        named = root.parent == Path("/tmp") and root.name.startswith(_PREFIX)
        named = named and len(root.name) == len(_PREFIX) + 5
        left = (root / _OWNER_FILE).is_file() or any(
            n.startswith(f"{root.name}-") for n in _netns_names()
        )
        if not (named and left):
            # Said, not ignored: a stray character (the comma after the path in `up`'s
            # first line, before this) once left a rig running with `down` exiting 0.
            print(f"hosts_helpers down: no rig at {argv[1]} (a rig is /tmp/gtrXXXXX, as up printed)",
                  file=sys.stderr)  # fmt: skip
            return 2
        for pid_file in root.glob("h*/docker.pid"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        time.sleep(2)
        _remove_rig(root, root.name)
        return 0
    print("usage: python -m hosts_helpers up [IMAGE...] | down /tmp/gtrXXXXX", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

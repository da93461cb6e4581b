"""A real etcd cluster for the tests: three members of Debian's etcd-server on loopback.

:class:`EtcdCluster` starts ``etcd`` processes (each its own data dir, client and peer
ports outside the ephemeral range), waits until the cluster has a leader, and can stop,
kill, pause (SIGSTOP) and restart members, so tests can take one member away (no effect)
or two (no quorum). Every test namespace is fresh (:func:`new_namespace`), so one cluster
serves a whole session (the ``etcd_cluster`` fixture in ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from listen_ports import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
#: The test cluster's raft election timeout (seconds), short as on a LAN. etcd's new raft
#: leader renews every lease for its TTL plus this (lessor Promote), so a lease whose
#: holder died around a raft election outlives it by up to this much.
ELECTION_TIMEOUT = 1.0


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.members = [
            Member(
                name=f"e{i}",
                client_port=free_port(),
                peer_port=free_port(),
                data_dir=root / f"e{i}.data",
                log_path=root / f"e{i}.log",
            )
            for i in range(size)
        ]
        self.token = f"gitorch-test-{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ life

    def start(self) -> EtcdCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            self._spawn(member, state="new")
        self.wait_healthy()
        return self

    def _spawn(self, member: Member, state: str) -> None:
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        argv = [
            ETCD,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            f"http://127.0.0.1:{member.client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{member.client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            # Short raft timings, as on a LAN: a lost leader is replaced in about a second.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            str(round(ELECTION_TIMEOUT * 1000)),
            # Old revisions are compacted away, as docs/architecture.md asks of operators.
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "5m",
        ]
        log = member.log_path.open("ab")
        member.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def close(self) -> None:
        """Kill every member (and remove nothing: the data dirs are under ``root``)."""
        for member in self.members:
            self.kill(member)

    # ------------------------------------------------------------------ faults

    def kill(self, member: Member) -> None:
        """SIGKILL one member (a lost machine); :meth:`restart` brings it back."""
        if member.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            member.proc.send_signal(signal.SIGCONT)  # a paused member dies too
            member.proc.kill()
        member.proc.wait(10)
        member.proc = None

    def restart(self, member: Member) -> None:
        """Start a killed member again on its data dir (it rejoins the cluster)."""
        assert member.proc is None, f"{member.name} still runs"
        self._spawn(member, state="existing")

    def pause(self, member: Member) -> None:
        """SIGSTOP: the member's ports stay open and nothing answers (a hung machine)."""
        assert member.proc is not None
        os.kill(member.proc.pid, signal.SIGSTOP)

    def resume(self, member: Member) -> None:
        assert member.proc is not None
        os.kill(member.proc.pid, signal.SIGCONT)

    # ------------------------------------------------------------------ reading

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, namespace: str) -> str:
        """The ``--state`` value of ``namespace`` on this cluster (every member named)."""
        return f"etcd://{','.join(self.endpoints)}/{namespace}"

    def healthy_members(self) -> list[str]:
        """Members whose ``/health`` says ok (a member without quorum says false)."""
        healthy = []
        for member in self.members:
            if not member.alive:
                continue
            try:
                with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        healthy.append(member.name)
            except (OSError, ValueError, urllib.error.URLError):
                continue
        return healthy

    def wait_healthy(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Until ``count`` members (default: every living one) report a healthy cluster."""
        want = count if count is not None else sum(1 for m in self.members if m.alive)
        deadline = time.monotonic() + timeout
        while len(self.healthy_members()) < want:
            for member in self.members:
                if member.proc is not None and member.proc.poll() is not None:
                    raise AssertionError(
                        f"etcd member {member.name} exited with {member.proc.returncode}:\n"
                        + member.log_path.read_text(errors="replace")[-2000:]
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"etcd: {len(self.healthy_members())} of {want} members healthy after "
                    f"{timeout:g}s"
                )
            time.sleep(0.1)

    def get(self, key: str) -> bytes | None:
        """One key's value, read straight from the cluster (not through gitorch)."""
        import base64

        body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        for member in self.members:
            if not member.alive:
                continue
            try:
                request = urllib.request.Request(
                    f"http://{member.endpoint}/v3/kv/range", data=body, method="POST"
                )
                with urllib.request.urlopen(request, timeout=3) as resp:
                    kvs = json.loads(resp.read()).get("kvs", [])
            except (OSError, urllib.error.URLError):
                continue
            return base64.b64decode(kvs[0].get("value", "")) if kvs else None
        raise AssertionError("no etcd member answered")

    def keys(self, prefix: str) -> dict[str, dict[str, object]]:
        """Every key under ``prefix`` with its metadata and JSON value (mod_revision...)."""
        import base64

        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])
        body = json.dumps(
            {
                "key": base64.b64encode(start).decode(),
                "range_end": base64.b64encode(end).decode(),
            }
        ).encode()
        for member in self.members:
            if not member.alive:
                continue
            try:
                request = urllib.request.Request(
                    f"http://{member.endpoint}/v3/kv/range", data=body, method="POST"
                )
                with urllib.request.urlopen(request, timeout=3) as resp:
                    kvs = json.loads(resp.read()).get("kvs", [])
            except (OSError, urllib.error.URLError):
                continue
            return {
                base64.b64decode(kv["key"]).decode(): {
                    "mod_revision": int(kv.get("mod_revision", 0)),
                    "value": base64.b64decode(kv.get("value", "")).decode(),
                }
                for kv in kvs
            }
        raise AssertionError("no etcd member answered")


def new_namespace(prefix: str = "t") -> str:
    """A namespace no other test uses (keys of one test never meet another's)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class TlsFiles:
    """A CA, the etcd server's certificate for 127.0.0.1, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(root: Path) -> TlsFiles:
    """Certificates made with openssl for a TLS etcd on loopback (client-cert auth)."""
    root.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=gitorch-test-ca", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    for name, extension in (
        # The server certificate serves the gRPC gateway as a client too (etcd 3.4).
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (root / f"{name}.ext").write_text(extension + "\n", encoding="utf-8")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=gitorch-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")  # fmt: skip
    return TlsFiles(
        root / "ca.pem", root / "server.pem", root / "server.key", root / "client.pem",
        root / "client.key",
    )  # fmt: skip


@contextlib.contextmanager
def tls_etcd(root: Path) -> Iterator[tuple[str, TlsFiles]]:
    """One etcd member serving clients over TLS only and asking for a client certificate
    signed by the test CA: its ``HOST:PORT`` and the files. Stopped at the block's end."""
    files = make_tls_files(root / "tls")
    port, peer = free_port(), free_port()
    argv = [
        ETCD, "--name", "tls0", "--data-dir", str(root / "tls0.data"),
        "--listen-client-urls", f"https://127.0.0.1:{port}",
        "--advertise-client-urls", f"https://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls0=http://127.0.0.1:{peer}",
        "--cert-file", str(files.server_cert), "--key-file", str(files.server_key),
        "--trusted-ca-file", str(files.ca), "--client-cert-auth",
    ]  # fmt: skip
    with (root / "tls0.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield f"127.0.0.1:{port}", files
    finally:
        proc.kill()
        proc.wait(10)

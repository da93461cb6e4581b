"""What the built-in balancer's http mode carries besides plain requests: WebSocket
(Upgrade) pass-through, large streamed bodies both ways without holding them whole, and
TLS termination with files from the secrets directory (real backends, real sockets,
certificates made with openssl in the test)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import resource
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from traffic_helpers import Apps, WebSocket, free_port, route, table

from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.routes import ListenError, RouteInvalid
from gitorch.traffic.table import Route, TlsFiles
from gitorch.traffic.workers import WorkerPool

MB = 1 << 20
PATTERN = bytes(range(256)) * 256  # what the test backend sends (64 KiB)


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_websocket_echo_through_the_balancer(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    app = apps.start("ka")
    port = free_port()
    lb.apply(table(route(port, [app.backend])))
    ws = WebSocket(port)
    try:
        assert ws.status == 101
        assert ws.headers["upgrade"].lower() == "websocket"
        assert ws.headers["sec-websocket-accept"] == ws.expected_accept
        assert ws.headers["x-backend"] == app.id
        for message in (b"hello", b"x" * 200, os.urandom(70_000)):
            ws.send(message)
            assert ws.receive() == (0x2, message)
        ws.send(b"text too", opcode=0x1)
        assert ws.receive() == (0x1, b"text too")
        # The upgraded connection is in flight on its backend while open (a drain waits).
        stats = lb.backend_stats("svc", app.id)
        assert stats is not None and stats.in_flight == 1
        ws.send(b"\x03\xe8", opcode=0x8)
        assert ws.receive() == (0x8, b"\x03\xe8")
    finally:
        ws.close()
    # A plain request on the same route still works, and the upgrade counted once.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()


def test_websocket_through_worker_processes(apps: Apps) -> None:
    app = apps.start("ka")
    port = free_port()
    with WorkerPool(workers=2) as pool:
        pool.apply(table(route(port, [app.backend])))
        for _ in range(4):  # connections land on either worker
            ws = WebSocket(port)
            try:
                assert ws.status == 101
                ws.send(b"ping")
                assert ws.receive() == (0x2, b"ping")
            finally:
                ws.close()


def test_a_100_mb_streamed_download_is_never_held_whole(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    app = apps.start("ka")
    port = free_port()
    lb.apply(table(route(port, [app.backend])))
    before = max_rss_mb()
    for path in (f"/stream?n={100 * MB}", f"/big?n={100 * MB}"):  # chunked, then a length
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        digest, total = hashlib.sha256(), 0
        while piece := resp.read(MB):
            digest.update(piece)
            total += len(piece)
        conn.close()
        assert total == 100 * MB
        expected = hashlib.sha256()
        for _ in range(100 * MB // len(PATTERN)):
            expected.update(PATTERN)
        assert digest.hexdigest() == expected.hexdigest()
    # The balancer runs in this process: 100 MB held anywhere would show here.
    assert max_rss_mb() - before < 40, f"grew by {max_rss_mb() - before:.0f} MB"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_large_upload_is_streamed_to_the_backend(
    lb: BuiltinLoadBalancer, apps: Apps, framing: str
) -> None:
    app = apps.start("ka")
    port = free_port()
    lb.apply(table(route(port, [app.backend])))
    size = 64 * MB
    before = max_rss_mb()

    def body() -> Iterator[bytes]:
        for _ in range(size // len(PATTERN)):
            yield PATTERN

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Length": str(size)} if framing == "length" else {}
    conn.request("POST", "/upload", body=body(), headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    expected = hashlib.sha256(PATTERN * (size // len(PATTERN))).hexdigest()
    assert resp.status == 200
    assert answer == {"id": app.id, "length": size, "sha256": expected}
    assert max_rss_mb() - before < 40 + 64, "the upload was held whole"  # + the expected copy


# ------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secrets directory with a test CA and a server certificate for 127.0.0.1."""
    secrets = tmp_path_factory.mktemp("secrets")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=secrets, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=gitorch test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "web.key", "-out", "web.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (secrets / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "web.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "web.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return secrets


def tls_get(port: int, ca: Path, path: str = "/headers") -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_tls_is_terminated_with_files_from_the_secrets_dir(apps: Apps, certificates: Path) -> None:
    app = apps.start("ka")
    port = free_port()
    tls_route = Route("svc", port, "http", (app.backend,), tls=TlsFiles("web.pem", "web.key"))
    with BuiltinLoadBalancer(secrets_dir=certificates) as lb:
        lb.apply(table(tls_route))
        status, body = tls_get(port, certificates / "ca.pem")
        assert status == 200
        headers = {k.lower(): v for k, v in json.loads(body)}
        assert headers["x-forwarded-proto"] == "https"
        # A client speaking plain HTTP to it gets nothing served in clear text.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/")
            conn.getresponse().read()
        conn.close()
        assert tls_get(port, certificates / "ca.pem", "/")[0] == 200


def test_bad_tls_files_are_refused_clearly(apps: Apps, certificates: Path) -> None:
    app = apps.start("ka")
    port = free_port()
    with BuiltinLoadBalancer(secrets_dir=certificates) as lb:
        missing = Route("svc", port, "http", (app.backend,), tls=TlsFiles("nope.pem", "web.key"))
        with pytest.raises(ListenError, match="service svc: cannot read TLS file .*nope.pem"):
            lb.apply(table(missing))
        mismatched = Route("svc", port, "http", (app.backend,), tls=TlsFiles("web.pem", "ca.key"))
        with pytest.raises(ListenError, match="cannot load its TLS certificate and key"):
            lb.apply(table(mismatched))
        escaping = Route("svc", port, "http", (app.backend,), tls=TlsFiles("../x.pem", "web.key"))
        with pytest.raises(RouteInvalid, match="leaves the secrets directory"):
            lb.apply(table(escaping))
    with BuiltinLoadBalancer() as lb, pytest.raises(RouteInvalid, match="no --secrets-dir"):
        lb.apply(table(Route("svc", port, "http", (), tls=TlsFiles("web.pem", "web.key"))))


def test_the_same_on_uvloop(apps: Apps, certificates: Path) -> None:
    """The proxy's workers run on uvloop by default: WebSocket, a streamed body and TLS
    there too."""
    app = apps.start("ka")
    plain, secure = free_port(), free_port()
    tls = TlsFiles("web.pem", "web.key")
    with BuiltinLoadBalancer(secrets_dir=certificates, event_loop="uvloop") as lb:
        lb.apply(
            table(
                Route("plain", plain, "http", (app.backend,)),
                Route("secure", secure, "http", (app.backend,), tls=tls),
            )
        )
        ws = WebSocket(plain)
        try:
            assert ws.status == 101
            ws.send(b"over libuv")
            assert ws.receive() == (0x2, b"over libuv")
        finally:
            ws.close()
        conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=30)
        conn.request("GET", f"/stream?n={20 * MB}")
        resp = conn.getresponse()
        assert resp.status == 200 and len(resp.read()) == 20 * MB
        conn.close()
        assert tls_get(secure, certificates / "ca.pem", "/")[0] == 200

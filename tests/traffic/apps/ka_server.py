"""A keep-alive HTTP/1.1 test backend for the load balancer tests (stdlib only).

Env: PORT, ID (reported in every answer), VERSION. Stops gracefully on SIGTERM: in-flight
requests finish, then the process exits 0 (it can only exit once every keep-alive
connection to it was closed, which is what the draining tests check).

Paths (GET unless said):
  /                 ``id=<ID> version=<VERSION>``
  /headers          the request headers as JSON
  /chunked?n=K      K chunks ``piece-<i>\\n`` sent with Transfer-Encoding: chunked
  /big?n=N          N bytes (a repeating pattern) with Content-Length
  /noframe          a body without length: the connection closes at its end
  /slow?ms=M        answers after M milliseconds
  /status?code=C    answers with status C
  POST|PUT /echo    JSON: body length and sha256, how the body was framed

With BREAK_HEAD=1 every request gets half a response head, then the connection closes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ID = os.environ.get("ID", "backend")
VERSION = os.environ.get("VERSION", "1")
PATTERN = bytes(range(256)) * 256  # 64 KiB
BREAK_HEAD = os.environ.get("BREAK_HEAD") == "1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Long on purpose: an idle keep-alive connection the proxy forgets to close keeps this
    # process from exiting after SIGTERM, and the draining tests would notice.
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", f"X-Backend: {ID}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode()
        # One write for head and body: a SIGKILL cannot cut a small answer in two.
        self.wfile.write(data if self.command == "HEAD" else data + body)

    def _query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def do_HEAD(self) -> None:
        self.do_GET()

    def _break_head(self) -> bool:
        """With BREAK_HEAD: half a head, then the connection closes (True if so)."""
        if not BREAK_HEAD:
            return False
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        self.wfile.flush()
        self.close_connection = True
        return True

    def do_GET(self) -> None:
        if self._break_head():
            return
        path = urlsplit(self.path).path
        query = self._query()
        if path == "/":
            self._send(200, f"id={ID} version={VERSION}\n".encode())
        elif path == "/headers":
            self._send(200, json.dumps(list(self.headers.items())).encode())
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Backend", ID)
            self.end_headers()
            for i in range(int(query.get("n", "5"))):
                piece = f"piece-{i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/big":
            size = int(query.get("n", "0"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                left = size
                while left:
                    piece = PATTERN[: min(left, len(PATTERN))]
                    self.wfile.write(piece)
                    left -= len(piece)
        elif path == "/noframe":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length here\n" * 3)
            self.close_connection = True
        elif path == "/slow":
            time.sleep(int(query.get("ms", "0")) / 1000)
            self._send(200, f"id={ID} version={VERSION} slow\n".encode())
        elif path == "/status":
            code = int(query.get("code", "200"))
            self._send(code, f"status {code} from {ID}\n".encode())
        else:
            self._send(404, b"not found\n")

    def _read_body(self) -> tuple[bytes, str]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts), "chunked"
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length), "length"

    def do_POST(self) -> None:
        body, framing = self._read_body()
        if self._break_head():
            return
        answer = {
            "id": ID,
            "method": self.command,
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "framing": framing,
        }
        self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    do_PUT = do_POST


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


def main() -> None:
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    print(f"ready {ID}", flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

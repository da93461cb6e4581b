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
  /stream?n=N       N bytes (the pattern) with Transfer-Encoding: chunked, 64 KiB a chunk
  /ws               a WebSocket echo (RFC 6455): text and binary frames come back as
                    they went, a close frame is answered and ends the connection
  /slow?ms=M        answers after M milliseconds
  /status?code=C    answers with status C
  POST|PUT /echo    JSON: body length and sha256, how the body was framed
  POST /upload      the same, hashing the body as it comes (never held whole)

With BREAK_HEAD=1 every request gets half a response head, then the connection closes;
with BREAK_BODY=1 a whole head and half its body (as a backend killed mid-answer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ID = os.environ.get("ID", "backend")
VERSION = os.environ.get("VERSION", "1")
PATTERN = bytes(range(256)) * 256  # 64 KiB
BREAK_HEAD = os.environ.get("BREAK_HEAD") == "1"
BREAK_BODY = os.environ.get("BREAK_BODY") == "1"


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

    def _break_answer(self) -> bool:
        """With BREAK_HEAD or BREAK_BODY: half an answer, then the connection closes (True
        if so)."""
        if BREAK_BODY:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhalf ")
        elif BREAK_HEAD:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        else:
            return False
        self.wfile.flush()
        self.close_connection = True
        return True

    def do_GET(self) -> None:
        if self._break_answer():
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
        elif path == "/stream":
            left = int(query.get("n", "0"))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while left:
                piece = PATTERN[: min(left, len(PATTERN))]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/ws":
            self._websocket_echo()
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

    def _websocket_echo(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._send(400, b"not a websocket handshake\n")
            return
        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
        head = (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Backend: {ID}\r\n\r\n"
        )
        self.wfile.write(head.encode())
        self.wfile.flush()
        self.close_connection = True
        while True:
            first = self.rfile.read(2)
            if len(first) < 2:
                return
            opcode, length = first[0] & 0x0F, first[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self.rfile.read(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self.rfile.read(8))
            mask = self.rfile.read(4) if first[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if length < 126:
                size = bytes([length])
            elif length < 65536:
                size = bytes([126]) + struct.pack("!H", length)
            else:
                size = bytes([127]) + struct.pack("!Q", length)
            self.wfile.write(bytes([0x80 | opcode]) + size + data)
            self.wfile.flush()
            if opcode == 0x8:
                return

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
        if urlsplit(self.path).path == "/upload":
            self._upload()
            return
        body, framing = self._read_body()
        if self._break_answer():
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

    def _upload(self) -> None:
        """POST /upload: the body hashed as it comes, never held whole."""
        digest = hashlib.sha256()
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                left = size
                while left:
                    piece = self.rfile.read(min(left, 1 << 16))
                    digest.update(piece)
                    left -= len(piece)
                total += size
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    break
                digest.update(piece)
                total += len(piece)
                left -= len(piece)
        answer = {"id": ID, "length": total, "sha256": digest.hexdigest()}
        self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})


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

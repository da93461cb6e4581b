"""A TCP test backend: reads until the client half-closes, then answers
``<ID>:`` followed by what it read, and closes. Env: PORT, ID. SIGTERM ends it (default action)."""

from __future__ import annotations

import os
import socketserver


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        received = b""
        while data := self.request.recv(65536):
            received += data
        self.request.sendall(os.environ.get("ID", "echo").encode() + b":" + received)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()

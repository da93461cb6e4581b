"""A controllable app for the health tests (stdlib only, run by the process driver).

* ``$START_DELAY`` (seconds, default 0): sleep before listening, like a slow start.
* ``$PORT``: where it listens (the process driver allocates it).
* ``GET /healthz`` answers from the file ``$HEALTH_FILE``: ``ok`` -> 200; ``hang`` -> no
  answer for 30 s (a probe that can only time out); anything else, or no file -> 503.
  The test flips the answer by rewriting the file.
"""

import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEALTH_FILE = Path(os.environ["HEALTH_FILE"])


def health_mode() -> str:
    try:
        return HEALTH_FILE.read_text().strip()
    except OSError:
        return "missing"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        mode = health_mode() if self.path == "/healthz" else "ok"
        if mode == "hang":
            time.sleep(30)
        status = 200 if mode in ("ok", "hang") else 503
        body = f"{mode}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # one line per probe would only fill the log file


time.sleep(float(os.environ.get("START_DELAY", "0")))
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
server.daemon_threads = True
print(f"health app listening on {os.environ['PORT']}", flush=True)
try:
    server.serve_forever()
finally:
    sys.stdout.flush()

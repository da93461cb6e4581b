"""An http app for the process driver: stdlib server on $PORT, GET /healthz -> 200 "ok"."""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = b"ok\n" if self.path == "/healthz" else b"gitorch test app\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ["PORT"])
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"http app listening on {port}", flush=True)
try:
    server.serve_forever()
finally:
    sys.stdout.flush()

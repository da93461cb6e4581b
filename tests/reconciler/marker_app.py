"""A replica whose readiness the test decides: its /healthz answers 200 once a marker
file of its version and slot (or of its whole version) exists, 503 before. The rollout
wave tests (issue 20, item 3) use it to make the first of a pair ready before its
partner, at the moment they choose."""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler_helpers import process_service

#: Answers /healthz 200 once the marker of its version and slot (or of its whole
#: version) exists in $MARKERS, 503 before; anything else 200.
APP = """\
import http.server, os
slot = os.environ["GITORCH_REPLICA"].split("-")[-3]
version, markers = os.environ["VERSION"], os.environ["MARKERS"]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = any(
            os.path.exists(os.path.join(markers, f"{version}-{tag}")) for tag in (slot, "all")
        )
        self.send_response(200 if ready or self.path != "/healthz" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

STRATEGY = """\
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: 60
    rollingUpdate: {maxSurge: 2, maxUnavailable: 0}
"""


def manifest(port: int, version: str, app: Path, markers: Path, replicas: int = 4) -> str:
    """Service ``api``: ``replicas`` of APP at ``version``, rolled two at a time."""
    return process_service(
        "api",
        port=port,
        version=version,
        replicas=replicas,
        command=[sys.executable, str(app)],
        env={"MARKERS": str(markers)},
        strategy=STRATEGY,
    )


def ready(markers: Path, version: str, slot: int | str) -> None:
    """From now on the replica of ``version`` in ``slot`` ("all": every one) is ready."""
    (markers / f"{version}-{slot}").touch()

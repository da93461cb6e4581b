"""Traps SIGTERM, cleans up for $CLEANUP_SECONDS (default 0.5), then exits 0."""

import os
import signal
import sys
import time


def on_term(signum: int, frame: object) -> None:
    print("got SIGTERM, cleaning up", flush=True)
    time.sleep(float(os.environ.get("CLEANUP_SECONDS", "0.5")))
    print("clean exit", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
print("graceful app started", flush=True)
while True:
    time.sleep(1)

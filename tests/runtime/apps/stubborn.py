"""Ignores SIGTERM: only SIGKILL stops it."""

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("stubborn app started", flush=True)
while True:
    time.sleep(1)

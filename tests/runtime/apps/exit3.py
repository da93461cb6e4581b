"""Exits at once with code 3."""

import sys

print("exiting with 3", flush=True)
sys.exit(3)

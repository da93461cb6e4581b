"""What ``hey`` (the HTTP load generator) reports, as numbers: shared by the proxy-kill
test and benchmark (``rigs/`` is on pytest's pythonpath and on the benchmarks' sys.path)."""

from __future__ import annotations

import re


def hey_figures(out: str) -> tuple[int, int, int, float]:
    """(answered, refused connections, other errors, slowest request in seconds) from
    hey's report."""
    answered = sum(int(n) for n in re.findall(r"\[\d{3}\]\s+(\d+) responses", out))
    refused = other = 0
    for count, what in re.findall(r"^\s*\[(\d+)\]\s+(.*)$", out, re.MULTILINE):
        if "responses" in what:
            continue
        if "connection refused" in what:
            refused += int(count)
        else:
            other += int(count)
    slowest = re.search(r"Slowest:\s+([\d.]+) secs", out)
    return answered, refused, other, float(slowest.group(1)) if slowest else 0.0

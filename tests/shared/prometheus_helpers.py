"""A real Prometheus server for tests (the Debian package ``prometheus``): started on a free
port with a one-second scrape interval over the given targets, stopped at the end.

Without the binary the tests that use it FAIL, they do not skip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from listen_ports import free_port


def query_raw(address: str, query: str) -> dict[str, object]:
    """The JSON answer of one instant query."""
    url = f"{address}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local test server
        doc: dict[str, object] = json.loads(response.read())
        return doc


@contextmanager
def running_prometheus(
    work: Path, targets: Sequence[str] = (), ready_query: str = "vector(1)"
) -> Iterator[str]:
    """A Prometheus scraping ``targets`` (host:port) every second; yields its address once
    ``ready_query`` has a result."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: apt-get install -y prometheus")
    config = work / "prometheus.yml"
    scrape = (
        "scrape_configs:\n  - job_name: demo\n    static_configs:\n"
        f"      - targets: {json.dumps(list(targets))}\n"
        if targets
        else ""
    )
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + scrape, encoding="utf-8"
    )
    port = free_port()
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited: {log_path.read_text()[-2000:]}")
            try:
                data = query_raw(address, ready_query).get("data")
                if isinstance(data, dict) and data.get("result"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus has no result for {ready_query} after 30s")
            time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""The shipped NodePool provider that makes private Docker engines on this machine
(examples/nodepool/local-engines), called as gitorch calls it, for the tests that use it
and for cleaning up what they leave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = ROOT / "examples" / "nodepool" / "local-engines"


def call_provider(engines: Path, verb: str, request: dict[str, Any]) -> Any:
    """``local-engines --root ENGINES VERB`` with ``request`` on stdin: its JSON answer."""
    done = subprocess.run(
        [sys.executable, str(PROVIDER), "--root", str(engines), verb],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def delete_all(engines: Path, pool: str) -> None:
    """Whatever a test left: every engine the provider still runs for ``pool``."""
    for node in call_provider(engines, "list", {"pool": pool}):
        call_provider(engines, "delete", {"pool": pool, "name": node["name"]})


def pool_yaml(
    engines: Path,
    *,
    min_nodes: int = 0,
    images: tuple[str, ...] = (),
    up: str = "10s",
    down: str = "10m",
    tls_ca: Path | None = None,
) -> str:
    """NodePool ``workers`` (at most 2 nodes of one cpu and 1Gi, labelled pool=workers)
    whose nodes this provider makes, with ``images`` copied into each. ``tls_ca``: the
    folder of a :func:`tls_certs.make_client_ca` CA (also the daemon's --secrets-dir):
    the engines serve TLS on tcp, and the template asks TLS with its files."""
    command = [str(PROVIDER), "--root", str(engines)]
    for image in images:
        command += ["--image", image]
    runtime: dict[str, Any] = {"driver": "docker"}
    if tls_ca is not None:
        command += ["--tls-ca", str(tls_ca)]
        runtime["tls"] = {
            "caCert": "ca.pem",
            "clientCert": "client.pem",
            "clientKey": "client-key.pem",
        }
    return f"""apiVersion: gitorch.dev/v1
kind: NodePool
metadata:
  name: workers
spec:
  minNodes: {min_nodes}
  maxNodes: 2
  template:
    labels: {{pool: workers}}
    capacity: {{cpu: "1", memory: 1Gi}}
    runtime: {json.dumps(runtime)}
  provider:
    command: {json.dumps(command)}
    timeout: 120s
  scaleUp: {{after: {up}}}
  scaleDown: {{utilizationBelow: 0.5, after: {down}}}
"""

"""Helpers for the volume tests: the counter example app as a Service on either driver, a
Volume manifest, its version page read as fields, and the volumes as gitorch reports them.

The counter (``examples/apps/counter``, and the ``gitorch-example/counter:1`` image) counts
its starts in its volume and reports two writers at once (``conflicts=N``): the service
itself checks the single-writer promise.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler_helpers import REPO_ROOT, get_body, gitorch

COUNTER_APP = REPO_ROOT / "examples" / "apps" / "counter" / "app.py"
COUNTER_IMAGE = "gitorch-example/counter:1"


def counter_service(
    name: str,
    *,
    driver: str,
    port: int,
    version: str = "1",
    volume: str = "data",
    read_only: bool = False,
    linger_ms: int = 0,
    strategy: str = "RollingUpdate",
    placement: dict[str, Any] | None = None,
) -> str:
    """The counter on ``driver``: a writer of ``volume`` (or, ``read_only``, a reader)."""
    env = {"VERSION": version, "LINGER_MS": str(linger_ms)}
    if read_only:
        env["COUNTER_MODE"] = "reader"
    if driver == "docker":
        run = f"  image: {COUNTER_IMAGE}"
        health = "/cgi-bin/healthz"
    else:
        run = f"  command: {json.dumps([sys.executable, str(COUNTER_APP)])}"
        health = "/healthz"
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Service",
        "metadata:",
        f"  name: {name}",
        "spec:",
        run,
        f"  env: {json.dumps(env)}",
        "  replicas: 1",
        "  ports:",
        "    - {name: http, containerPort: 8080}",
        f"  expose: {{port: {port}, targetPort: http, protocol: http}}",
        "  terminationGracePeriodSeconds: 10",
        "  readinessProbe:",
        f"    httpGet: {{path: {health}, port: http}}",
        "    periodSeconds: 1",
        "    failureThreshold: 1",
        "  strategy:",
        f"    type: {strategy}",
        "    progressDeadlineSeconds: 90",
        "  volumes:",
        f"    - {{name: data, volume: {volume}, mountPath: /var/lib/counter, "
        f"readOnly: {'true' if read_only else 'false'}}}",
    ]
    if placement:
        lines.append(f"  placement: {json.dumps(placement)}")
    return "\n".join(lines) + "\n"


def volume_yaml(name: str = "data", **spec: str) -> str:
    """A Volume (``spec`` as given: ``reclaimPolicy="Delete"``, ``node="pa"``...)."""
    body = "".join(f"  {key}: {value}\n" for key, value in spec.items()) or "  {}\n"
    return f"apiVersion: gitorch.dev/v1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n{body}"


def page(port: int, path: str = "/") -> dict[str, str] | None:
    """The counter's version page as fields (``starts``, ``conflicts``, ``writable``...),
    None when it does not answer 200."""
    body = get_body(port, path)
    if body is None:
        return None
    return dict(word.split("=", 1) for word in body.split() if "=" in word)


def volumes_of(state: Path | Sequence[str], cwd: Path) -> list[dict[str, Any]]:
    """``gitorch volumes --format json`` (``state``: a state directory, or the options
    that name the state, a ``Cluster``'s ``state_args``)."""
    where = ["--state", str(state)] if isinstance(state, Path) else list(state)
    done = gitorch("volumes", *where, "--format", "json", cwd=cwd)
    assert done.code == 0, (done.code, done.stderr)
    found: list[dict[str, Any]] = done.json()["volumes"]
    return found


def phase_of(state: Path | Sequence[str], cwd: Path, name: str) -> str | None:
    rows = [r for r in volumes_of(state, cwd) if r["name"] == name]
    return rows[0]["phase"] if rows else None

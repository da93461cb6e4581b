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

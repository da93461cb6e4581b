"""NodePool providers written by a test (real executables gitorch runs), and manifests
loaded from text, for the tests of node pools outside a daemon."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def load_state(text: str, path: str = "pool.yaml") -> DesiredState:
    """The desired state of one manifest file's ``text`` (it must be valid)."""
    result = ManifestLoader().load([_File(path, text)], revision="r1")
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


def fixed_endpoint_provider(folder: Path, endpoint: str) -> list[str]:
    """A provider (``folder/provider``) that lists nothing and answers ``endpoint`` for
    every node it makes; each verb it is called with is appended to ``folder/verbs``."""
    path = folder / "provider"
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "verb, request = sys.argv[1], json.load(sys.stdin)\n"
        f"with open({str(folder / 'verbs')!r}, 'a') as log:\n"
        "    log.write(verb + '\\n')\n"
        "if verb == 'list':\n"
        "    print('[]')\n"
        "elif verb == 'create':\n"
        f"    print(json.dumps({{'name': request['name'], 'endpoint': {endpoint!r}}}))\n"
        "else:\n"
        "    print('{}')\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    return [str(path)]


def pool_state(
    name: str,
    command: list[str],
    *,
    min_nodes: int = 0,
    max_nodes: int = 3,
    runtime: dict[str, Any] | None = None,
) -> DesiredState:
    """A desired state of one NodePool (one cpu, 1Gi nodes) run by ``command``."""
    text = f"""apiVersion: gitorch.dev/v1
kind: NodePool
metadata: {{name: {name}}}
spec:
  minNodes: {min_nodes}
  maxNodes: {max_nodes}
  template:
    capacity: {{cpu: "1", memory: 1Gi}}
    runtime: {json.dumps(runtime or {"driver": "docker"})}
  provider: {{command: {json.dumps(command)}, timeout: 120s}}
"""
    return load_state(text)

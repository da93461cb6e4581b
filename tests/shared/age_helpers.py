"""age keys and ciphertexts made with the real ``age-keygen`` and ``age`` commands (Debian's
``age`` package): what an operator does to put a secret in the repo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _require() -> None:
    for program in ("age", "age-keygen"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is needed for the secret tests (apt-get install age)")


def age_identity(path: Path) -> str:
    """A fresh identity file at ``path`` (mode 600); its recipient (``age1...``)."""
    _require()
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    path.chmod(0o600)
    done = subprocess.run(["age-keygen", "-y", str(path)], capture_output=True, check=True)
    return done.stdout.decode().strip()


def encrypt(value: str, recipient: str) -> str:
    """``printf %s VALUE | age -a -r RECIPIENT``: the armored ciphertext."""
    done = subprocess.run(
        ["age", "-a", "-r", recipient], input=value.encode(), capture_output=True, check=True
    )
    return done.stdout.decode()


def secret_manifest(name: str, values: dict[str, str], recipient: str) -> str:
    """A ``kind: Secret`` with each value encrypted for ``recipient``."""
    lines = ["apiVersion: gitorch.dev/v1", "kind: Secret", "metadata:", f"  name: {name}",
             "spec:", "  encryptedData:"]  # fmt: skip
    for key, value in values.items():
        lines.append(f"    {key}: |")
        lines += [f"      {line}" for line in encrypt(value, recipient).splitlines()]
    return "\n".join(lines) + "\n"

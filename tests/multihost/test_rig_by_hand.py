"""The rig as README.md's "Many hosts" tells a reader to run it by hand (no rig booted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hosts_helpers import Rig, RigHost

ROOT = Path(__file__).resolve().parents[2]


def _readme_pythonpath() -> str:
    """The PYTHONPATH of README.md's `hosts_helpers up` line."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^PYTHONPATH=(\S+) python3 -m hosts_helpers up", readme, re.MULTILINE)
    assert found, "README.md no longer shows how to boot the rig by hand"
    return found.group(1)


def _rig_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python3 -m hosts_helpers ARGS`` with the README's PYTHONPATH, from the repo root."""
    pythonpath = _readme_pythonpath().replace("$PWD", str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "hosts_helpers", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_pythonpath_imports_the_rig() -> None:
    # Without arguments the module prints its usage: it imported (private_dockerd too).
    done = _rig_module()
    assert done.returncode == 2, done.stderr
    assert "usage: python -m hosts_helpers up" in done.stderr


def test_describe_says_how_to_cut_a_host_off() -> None:
    rig = Rig(token="abcde")
    rig.prefix = "198.18.9"
    for index in (1, 2):
        rig.hosts.append(
            RigHost(
                name=f"h{index}",
                netns=f"{rig.name}-h{index}",
                address=f"198.18.9.{index + 1}",
                root=rig.root / f"h{index}",
                switch_port=f"ph{index}",
                switch_netns=rig.switch_netns,
            )
        )
    text = rig.describe()
    assert text.startswith("rig gtrabcde in /tmp/gtrabcde (outside: 198.18.9.1)\n"), text
    assert "ip -n gtrabcde-sw link set ph1|ph2 down (up: back)" in text


def test_down_refuses_what_is_not_a_rig(tmp_path: Path) -> None:
    # `down /tmp/gtrXXXXX,` (a character too many) said nothing and left the rig running.
    for wrong in ("/tmp/gtrabcde,", str(tmp_path), "/tmp/gtrabcde"):
        done = _rig_module("down", wrong)
        assert done.returncode == 2, (wrong, done.stderr)
        assert f"no rig at {wrong} " in done.stderr

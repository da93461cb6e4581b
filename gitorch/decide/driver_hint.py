"""The hint for a repo whose services the implicit local node's driver cannot run.

``--runtime`` defaults to docker when a Docker engine answers (the CLI contract). A repo
of command-only services (the process driver's) then plans every replica as
unschedulable, and a newcomer with Docker installed meets that on the first `plan` of
the example shop. The plan's reasons say which driver each needs; this says what to do.
"""

from __future__ import annotations

from gitorch.decide.cluster import runnable_drivers
from gitorch.manifests.model import DesiredState

_WHY = {
    "docker": "a Docker engine answers here",
    "process": "no Docker engine answers here",
}


def driver_mismatch(desired: DesiredState, requested: str | None, driver: str) -> str | None:
    """A warning when ``--runtime`` was not given, the repo declares no Node, and some of
    its services cannot run on ``driver``, the one the implicit local node got; else None."""
    if requested or desired.nodes:
        return None
    stranded = sorted(
        name
        for name, service in desired.services.items()
        if (needs := runnable_drivers(service)) and driver not in needs
    )
    if not stranded:
        return None
    other = "process" if driver == "docker" else "docker"
    names = ", ".join(stranded[:5]) + (
        f" and {len(stranded) - 5} more" if len(stranded) > 5 else ""
    )
    return (
        f"the local node runs the {driver} driver ({_WHY.get(driver, 'the default')}; no "
        f"--runtime was given and the repo declares no Node), and {names} can only run on "
        f"the {other} driver: pass --runtime {other}, or declare a Node"
    )

"""Taints and tolerations, as Kubernetes matches them."""

from __future__ import annotations

from collections.abc import Sequence

from gitorch.manifests.model import Toleration

#: Effects that keep a replica off a node (NoExecute also evicts: see :mod:`.evict`).
HARD_EFFECTS = ("NoSchedule", "NoExecute")


def tolerates(tolerations: Sequence[Toleration], key: str, value: str, effect: str) -> bool:
    """Whether any toleration matches the taint ``key=value:effect``.

    A toleration without an effect matches every effect; ``Exists`` without a key matches
    every taint, with a key every value of that key; ``Equal`` needs key and value.
    """
    for tol in tolerations:
        if tol.effect not in (None, effect):
            continue
        if tol.operator == "Exists" and tol.key in (None, key):
            return True
        if tol.key == key and (tol.value or "") == value:
            return True
    return False


def taint_text(key: str, value: str, effect: str) -> str:
    """How a reason names a taint: ``taint dedicated=db:NoSchedule`` (or ``taint gpu:NoExecute``)."""
    return f"taint {key}={value}:{effect}" if value else f"taint {key}:{effect}"

"""The mass-prune guard: a revision that would remove every service, or more than half of
them, is refused unless allowed. Pure.

A commit that deletes most manifests is far more often a mistake (a wrong ``--path``, a
botched merge, a generator that wrote nothing) than an intent, and pruning is the one
action that cannot be rolled back by reverting: the replicas are gone. Argo CD refuses an
automated sync to an empty set of resources unless ``allowEmpty``; gitorch refuses the
revision (the last good one keeps running) unless ``--allow-mass-prune`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Collection


def mass_prune(applied: Collection[str], desired: Collection[str]) -> str | None:
    """Why applying ``desired`` over the ``applied`` services is a mass prune (None: it
    is not). Removing all of them, or more than half, is."""
    applied_set = set(applied)
    removed = sorted(applied_set - set(desired))
    if not removed:
        return None
    shown = ", ".join(removed[:10]) + (
        f" and {len(removed) - 10} more" if len(removed) > 10 else ""
    )
    if len(removed) == len(applied_set):
        return (
            f"it would remove every service ({shown}); allow it with --allow-mass-prune "
            "if that is the intent"
        )
    if len(removed) * 2 > len(applied_set):
        return (
            f"it would remove {len(removed)} of {len(applied_set)} services ({shown}); allow "
            "it with --allow-mass-prune if that is the intent"
        )
    return None

"""Operator requests on a rollout (promote, abort), recorded in the store for the next
reconcile pass; shared by ``gitorch promote``/``abort`` and the daemon's HTTP API."""

from __future__ import annotations

from gitorch.state.records import RolloutPhase, RolloutRecord
from gitorch.state.store import StateStore

_ACTIVE = (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


def request_action(store: StateStore, service: str, what: str, actor: str) -> tuple[bool, str]:
    """Flag ``service``'s rollout for ``what`` (promote | abort): (accepted, message).

    ``actor``: who asked, as the audit log names it: ``token:NAME`` (an authenticated API
    request; the entry then says ``requested by token NAME`` and carries ``{"token":
    NAME}``), ``user:USER@HOST`` (the CLI on the daemon's host), ``api`` (an API without
    tokens).
    """
    record = store.get_rollout(service)
    if record is None:
        return False, f"no service named {service!r} has a rollout"
    if record.phase not in _ACTIVE:
        return False, f"{service} is {record.phase}: nothing to {what}"
    token = actor.removeprefix("token:") if actor.startswith("token:") else None
    who = f"token {token}" if token else actor.removeprefix("user:")

    def write() -> None:
        store.request(service, what)
        store.append_event(
            f"rollout.{what}",
            f"{service}: {what} requested by {who}",
            service=service,
            data={"token": token} if token else None,
            actor=actor,
        )

    # The request and its audit entry, or neither (on etcd tried again if the leader
    # wrote meanwhile).
    store.atomic(write)
    return True, f"{what} of {service} requested ({_where(record)}weight {record.weight}%)"


def _where(record: RolloutRecord) -> str:
    """The step as status counts it (1-based, of the strategy's steps), or nothing."""
    if record.step is None:
        return ""
    # Only a canary has a list of steps (as the dashboard reads them).
    steps = record.spec.get("spec", {}).get("strategy", {}).get("canary", {}).get("steps")
    total = f"/{len(steps)}" if isinstance(steps, list) else ""
    return f"step {record.step + 1}{total}, "

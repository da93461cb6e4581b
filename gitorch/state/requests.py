"""Operator requests on a rollout (promote, abort), recorded in the store for the next
reconcile pass; shared by ``gitorch promote``/``abort`` and the daemon's HTTP API."""

from __future__ import annotations

from gitorch.state.records import RolloutPhase
from gitorch.state.store import StateStore

_ACTIVE = (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


def request_action(
    store: StateStore, service: str, what: str, actor: str | None = None
) -> tuple[bool, str]:
    """Flag ``service``'s rollout for ``what`` (promote | abort): (accepted, message).

    ``actor``: the API token's name when the request came through an authenticated API;
    the audit entry then says ``requested by token NAME`` and carries ``{"token": NAME}``.
    """
    record = store.get_rollout(service)
    if record is None:
        return False, f"no service named {service!r} has a rollout"
    if record.phase not in _ACTIVE:
        return False, f"{service} is {record.phase}: nothing to {what}"
    store.request(service, what)
    by = f" by token {actor}" if actor else ""
    store.append_event(
        f"rollout.{what}",
        f"{service}: {what} requested{by}",
        service=service,
        data={"token": actor} if actor else None,
    )
    return True, f"{what} of {service} requested (step {record.step}, weight {record.weight}%)"

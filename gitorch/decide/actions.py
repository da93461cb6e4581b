"""The actions of one reconcile pass: what ``gitorch plan`` lists and the executor carries out.

A pass decides (pure, :func:`gitorch.decide.decide_pass`), then executes exactly the
actions it decided, then records the outcome. ``gitorch plan`` renders the same actions
from the same decision, so a reviewer reads what will run, not a second opinion of it.

Every action names its service and a reason in words. ``key()`` is what identifies an
action across processes (no runtime ids of replicas that do not exist yet, no times), so
a plan computed by one process can be compared with the pass another one executes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class StartReplica:
    """Start ``replica`` (``web-3``) of ``template`` on ``node``."""

    service: str
    replica: str
    slot: int
    template: str
    node: str
    reason: str

    verb = "start"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service, self.replica, self.template[:12], self.node)

    def describe(self) -> str:
        return f"start {self.replica} ({self.template[:12]}) on {self.node}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "service": self.service,
            "replica": self.replica,
            "version": self.template[:12],
            "node": self.node,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class StopReplica:
    """Take a replica away. ``drain``: out of traffic first, wait for its requests in
    flight, then SIGTERM with ``grace``; otherwise (it serves nothing: exited, failed its
    liveness probe, never ready) remove it at once."""

    service: str
    replica: str
    replica_id: str
    node: str
    reason: str
    drain: bool = True
    grace: float = 30.0
    #: The pass's starts need not wait for its exit: it is terminating once withdrawn
    #: (the strategy's ``Stop.terminating_frees_room``, Kubernetes' surge semantics).
    terminating_frees_room: bool = False

    @property
    def verb(self) -> str:
        return "drain" if self.drain else "remove"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service, self.replica, self.replica_id, self.node)

    def describe(self) -> str:
        how = "drain and stop" if self.drain else "remove"
        return f"{how} {self.replica} on {self.node}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "service": self.service,
            "replica": self.replica,
            "node": self.node,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RollBack:
    """The rollout of ``failed_template`` failed: return to the last good spec."""

    service: str
    failed_template: str
    to_revision: str
    reason: str

    verb = "roll-back"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service, self.failed_template[:12], self.to_revision)

    def describe(self) -> str:
        return (
            f"roll {self.service} back from {self.failed_template[:12]} to "
            f"{self.to_revision[:12] or 'the last good spec'}: {self.reason}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "service": self.service,
            "version": self.failed_template[:12],
            "toRevision": self.to_revision,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SetTraffic:
    """Give each version of ``service`` its share of traffic (percent), serve ``preview``
    on the blue-green preview port, send requests matching ``rules`` to the new version."""

    service: str
    weights: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    preview: str | None = None
    rules: tuple[str, ...] = ()  # described match rules, for the plan
    reason: str = "the rollout's current step"

    verb = "set-traffic"

    def _text(self) -> str:
        parts = [f"{w}% to {v[:12]}" for v, w in sorted(self.weights.items())]
        if self.preview:
            parts.append(f"preview {self.preview[:12]}")
        parts.extend(self.rules)
        return ", ".join(parts) or "no split"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service, self._text())

    def describe(self) -> str:
        return f"route {self.service}: {self._text()}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "service": self.service,
            "weights": {v[:12]: w for v, w in sorted(self.weights.items())},
            "preview": self.preview[:12] if self.preview else None,
            "rules": list(self.rules),
        }


@dataclass(frozen=True)
class Wait:
    """Nothing may be done for ``service`` now, and why (a dependency, a back-off, a
    pause, a replica not ready yet, a slot that fits on no node)."""

    service: str
    reason: str

    verb = "wait"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service, self.reason)

    def describe(self) -> str:
        return f"{self.service} waits: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.verb, "service": self.service, "reason": self.reason}


@dataclass(frozen=True)
class ForgetService:
    """``service`` left Git and none of its replicas is left: drop its records."""

    service: str
    reason: str = "left Git"

    verb = "forget"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.service)

    def describe(self) -> str:
        return f"forget {self.service}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.verb, "service": self.service, "reason": self.reason}


@dataclass(frozen=True)
class _VolumeAction:
    """Something done to a Volume on a node. ``service`` names the Volume (``Volume/data``)
    where a list of actions has a column for what each concerns."""

    volume: str
    node: str
    reason: str

    verb = "volume"

    @property
    def service(self) -> str:
        return f"Volume/{self.volume}"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.volume, self.node)

    def _what(self) -> str:
        return f"{self.verb} volume {self.volume} on {self.node}"

    def describe(self) -> str:
        return f"{self._what()}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "volume": self.volume,
            "node": self.node,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BindVolume(_VolumeAction):
    """A ReadWriteOnce volume belongs to ``node`` from now on (its users go only there);
    also a released volume back in Git, bound again to the node that kept its data."""

    verb = "bind"

    def _what(self) -> str:
        return f"bind volume {self.volume} to {self.node}"


@dataclass(frozen=True)
class CreateVolume(_VolumeAction):
    """Make the volume on ``node`` (before its first user there starts); one left there
    earlier (reclaimPolicy Retain) is adopted with its data."""

    verb = "create"


@dataclass(frozen=True)
class DeleteVolume(_VolumeAction):
    """The Volume left Git with reclaimPolicy Delete and has no user left on ``node``:
    remove it, and its data, and forget it."""

    verb = "delete"

    def _what(self) -> str:
        return f"delete volume {self.volume} and its data on {self.node}"


@dataclass(frozen=True)
class ReleaseVolume(_VolumeAction):
    """The Volume left Git with reclaimPolicy Retain: it stays on ``node`` with its data,
    released, until a Volume of the same name takes it back."""

    verb = "release"

    def _what(self) -> str:
        return f"release volume {self.volume} (kept on {self.node})"


@dataclass(frozen=True)
class VolumeMissing(_VolumeAction):
    """A volume gitorch made is gone from ``node`` (removed outside gitorch): reported,
    and never made again, empty, under its users (``gitorch volumes --reset``)."""

    verb = "missing"

    def _what(self) -> str:
        return f"volume {self.volume} is missing on {self.node}"


@dataclass(frozen=True)
class _IngressAction:
    node: str
    address: str
    reason: str

    verb = "ingress"

    @property
    def service(self) -> str:
        """What the action concerns, for a list of actions' service column."""
        return f"Node/{self.node}"

    def key(self) -> tuple[str, ...]:
        return (self.verb, self.node)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.verb,
            "node": self.node,
            "address": self.address,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class StartIngress(_IngressAction):
    """Start (or replace) the ingress of ``node``'s host, listening on ``address``."""

    verb = "start-ingress"

    def describe(self) -> str:
        return f"start the ingress on {self.node} ({self.address}): {self.reason}"


@dataclass(frozen=True)
class RemoveIngress(_IngressAction):
    """Stop and remove the ingress of ``node``'s host."""

    verb = "remove-ingress"

    def describe(self) -> str:
        return f"remove the ingress on {self.node} ({self.address}): {self.reason}"


VolumeAction = BindVolume | CreateVolume | DeleteVolume | ReleaseVolume | VolumeMissing

Action = (
    StartReplica
    | StopReplica
    | RollBack
    | SetTraffic
    | Wait
    | ForgetService
    | BindVolume
    | CreateVolume
    | DeleteVolume
    | ReleaseVolume
    | VolumeMissing
    | StartIngress
    | RemoveIngress
)

#: Actions that change replicas (the others are bookkeeping, volumes or explanation).
WORLD_CHANGING = (StartReplica, StopReplica)
#: Actions that make or remove a volume.
VOLUME_CHANGING = (CreateVolume, DeleteVolume)
#: Actions that start or remove a host's ingress.
INGRESS_CHANGING = (StartIngress, RemoveIngress)


def action_keys(actions: tuple[Action, ...] | list[Action]) -> list[tuple[str, ...]]:
    """The comparable form of a list of actions (sorted: their order within one pass is
    the executor's business)."""
    return sorted(action.key() for action in actions)

"""The Plan: what applying a revision would change, and its stable digest."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gitorch.decide.actions import INGRESS_CHANGING, VOLUME_CHANGING, WORLD_CHANGING, Action
from gitorch.decide.ingress import HostTable
from gitorch.diff.fields import FieldChange, diff_json
from gitorch.errors import PlanChanged
from gitorch.strategies.preview import RolloutPreview

ACTIONS = ("create", "update", "delete")


@dataclass(frozen=True)
class ObjectChange:
    """One object that differs between Git and what was applied."""

    kind: str
    name: str
    action: str  # create | update | delete
    # A tuple, or for a create or delete the object's Leaves (made on demand).
    diff: Sequence[FieldChange] = ()
    rollout: RolloutPreview | None = None
    replaces_replicas: bool = False  # the replica template changed: new replicas roll out
    applied_revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "diff": diff_json(self.diff),
            "replacesReplicas": self.replaces_replicas,
            "appliedRevision": self.applied_revision,
        }
        if self.rollout is not None:
            out["rollout"] = self.rollout.to_json()
        return out


@dataclass(frozen=True)
class DriftItem:
    """Live state that differs from the last applied revision (not from a Git change)."""

    service: str
    policy: str  # correct | warn | ignore
    message: str
    replicas: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "policy": self.policy,
            "message": self.message,
            "replicas": list(self.replicas),
        }


@dataclass(frozen=True)
class PlacementItem:
    service: str
    replica: str
    node: str
    victims: tuple[str, ...] = ()  # "service/replica on node" preempted to make room

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": self.service, "replica": self.replica, "node": self.node}
        if self.victims:
            out["preempts"] = list(self.victims)
        return out


@dataclass(frozen=True)
class Unschedulable:
    service: str
    replica: str
    reasons: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "replica": self.replica,
            "reasons": list(self.reasons),
            "counts": dict(sorted(self.counts.items())),
        }


@dataclass(frozen=True)
class AutoscaledItem:
    """An autoscaled service: the count the autoscaler owns (not drift from ``replicas``),
    its bounds, and why (the last decision). ``desired`` None: no decision yet (the pass
    keeps what runs, within the bounds). ``recommendations``: vertical, "requests.cpu
    250m -> 120m" each."""

    service: str
    min_replicas: int
    max_replicas: int
    desired: int | None
    running: int
    git_replicas: int
    reason: str = ""
    readings: tuple[str, ...] = ()
    recommendations: tuple[str, ...] = ()

    def key(self) -> dict[str, Any]:
        """What the plan's digest covers: the count and bounds, not the readings (they
        move every sync without changing what a pass does)."""
        return {
            "service": self.service,
            "min": self.min_replicas,
            "max": self.max_replicas,
            "desired": self.desired,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.key(),
            "running": self.running,
            "gitReplicas": self.git_replicas,
            "reason": self.reason,
            "readings": list(self.readings),
            "recommendations": list(self.recommendations),
        }

    def describe(self) -> str:
        count = (
            f"{self.desired} replicas (the autoscaler's count)"
            if self.desired is not None
            else f"{self.running} running (no autoscaler decision yet)"
        )
        text = f"{self.service}: {count}, min {self.min_replicas}, max {self.max_replicas}"
        if self.git_replicas != self.desired:
            text += f"; replicas: {self.git_replicas} in Git is not used while autoscaled"
        return text


@dataclass(frozen=True)
class Plan:
    """Everything ``gitorch plan`` shows; ``apply`` executes the same object."""

    revision: str
    base_revision: str | None  # what is applied now
    path: str
    changes: tuple[ObjectChange, ...]
    drift: tuple[DriftItem, ...]
    placements: tuple[PlacementItem, ...]
    unschedulable: tuple[Unschedulable, ...]
    order: tuple[tuple[str, ...], ...]  # services in dependsOn waves
    unchanged: tuple[str, ...] = ()  # "Kind/name" of objects with no change
    warnings: tuple[str, ...] = ()
    # The next pass, exactly as the reconciler will execute it (empty when the plan was
    # computed without a decision).
    actions: tuple[Action, ...] = ()
    autoscaled: tuple[AutoscaledItem, ...] = ()
    # What each remote host's ingress serves after the next pass (node -> table).
    ingresses: tuple[HostTable, ...] = ()

    @property
    def summary(self) -> dict[str, int]:
        counts = {action: 0 for action in ACTIONS}
        for change in self.changes:
            counts[change.action] += 1
        counts["unchanged"] = len(self.unchanged)
        counts["drift"] = len(self.drift)
        counts["unschedulable"] = len(self.unschedulable)
        counts["actions"] = sum(1 for a in self.actions if isinstance(a, WORLD_CHANGING))
        counts["volumeActions"] = sum(1 for a in self.actions if isinstance(a, VOLUME_CHANGING))
        ingress = sum(1 for a in self.actions if isinstance(a, INGRESS_CHANGING))
        if ingress:  # only then: plans of one-host clusters keep their digests
            counts["ingressActions"] = ingress
        return counts

    @property
    def has_changes(self) -> bool:
        """What ``plan``'s exit code 2 means: applying would change something (a field, a
        drift to correct, or a replica the next pass starts or stops)."""
        return (
            bool(self.changes)
            or any(d.policy == "correct" for d in self.drift)
            or any(
                isinstance(a, WORLD_CHANGING + VOLUME_CHANGING + INGRESS_CHANGING)
                for a in self.actions
            )
        )

    def body(self, *, changes: bool = True) -> dict[str, Any]:
        """What the digest covers; ``changes=False``: with ``"changes": []`` (for a writer
        that makes the changes' JSON piece by piece)."""
        body = {
            "revision": self.revision,
            "baseRevision": self.base_revision,
            "path": self.path,
            "changes": [change.to_json() for change in self.changes] if changes else [],
            "drift": [item.to_json() for item in self.drift],
            "placements": [p.to_json() for p in self.placements],
            "unschedulable": [u.to_json() for u in self.unschedulable],
            "order": [list(wave) for wave in self.order],
            "unchanged": list(self.unchanged),
            "warnings": list(self.warnings),
            "actions": [action.to_json() for action in self.actions],
            "summary": self.summary,
            # Only when a service is autoscaled: the digests of other plans stay as they were.
            **({"autoscaled": [a.key() for a in self.autoscaled]} if self.autoscaled else {}),
        }
        if self.ingresses:
            body["ingresses"] = [host.to_json() for host in self.ingresses]
        return body

    @property
    def digest(self) -> str:
        """sha256 of the plan's content: equal plans, equal digests (no timestamps inside)."""
        return _digest_of(self.body())

    def to_json(self) -> dict[str, Any]:
        body = self.body()  # built once: a first plan of 2,000 Services holds ~10^5 changes
        out = {**body, "digest": _digest_of(body)}
        if self.autoscaled:
            out["autoscaled"] = [a.to_json() for a in self.autoscaled]
        return out


#: A number orjson writes in exponent form (``1e16``, ``1.5e-7``), and one it writes
#: positionally where the standard encoder uses an exponent (``0.00001``: ``1e-05``): the
#: only places their compact texts differ. Searched for only around an ``e`` followed by a
#: digit or minus, and a ``0.0000`` (a regular expression over all of a first plan's ~8 MB
#: of text took longer than the encoding it spares); a string holding such a pattern costs
#: only the slower encoder.
_EXPONENT_AROUND = re.compile(rb"e[-0-9]")
_EXPONENT_NUMBER = re.compile(rb"[:,\[]-?[0-9]+(?:\.[0-9]+)?e[-0-9]$")
_TINY_NUMBER = re.compile(rb"[:,\[]-?0\.0000")
#: Bytes before an ``e`` that can belong to its number (sign, 17 digits, point) and the
#: character before it.
_NUMBER_REACH = 24


def float_forms_differ(text: bytes) -> bool:
    """Whether the standard encoder may write a number of ``text`` (orjson's compact
    JSON, or a piece of it not starting with a number) otherwise: its text is then the
    one digested."""
    if b"0.0000" in text and _TINY_NUMBER.search(text):
        return True
    for found in _EXPONENT_AROUND.finditer(text):
        end = found.end()
        if _EXPONENT_NUMBER.search(text, max(0, end - _NUMBER_REACH), end):
            return True
    return False


#: Changes per piece of a plan's JSON text when it is written piece by piece (the digest's
#: compact text, the indented output): a piece's memory is reused for the next instead of
#: a first plan's ~8 MB and ~14 MB each being made (and paged in) at once.
CHANGES_PER_PIECE = 100


def compact_pieces(body: dict[str, Any]) -> Iterator[bytes]:
    """``orjson.dumps(body, option=OPT_SORT_KEYS)`` piece by piece (joined, the same
    bytes): each top-level key's, the changes :data:`CHANGES_PER_PIECE` at a time. No
    piece starts with a number (each starts with ``{``, ``,``, ``"`` or ``]``), so each
    can be searched for float forms on its own. Raises ``orjson.JSONEncodeError`` as
    dumps does."""
    yield b"{"
    for n, key in enumerate(sorted(body)):
        value = body[key]
        head = (b"," if n else b"") + orjson.dumps(key) + b":"
        if key == "changes" and isinstance(value, list) and len(value) > CHANGES_PER_PIECE:
            yield head + b"["
            for start in range(0, len(value), CHANGES_PER_PIECE):
                text = orjson.dumps(
                    value[start : start + CHANGES_PER_PIECE], option=orjson.OPT_SORT_KEYS
                )
                yield (b"," if start else b"") + text[1:-1]
            yield b"]"
        else:
            yield head + orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    yield b"}"


def standard_digest(body: dict[str, Any]) -> str:
    """sha256 of the standard encoder's compact text of ``body`` (sorted keys, raw UTF-8)."""
    standard = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(standard.encode("utf-8")).hexdigest()


def _digest_of(body: dict[str, Any]) -> str:
    """sha256 of the compact JSON (sorted keys, raw UTF-8) of ``body``: the standard
    encoder's text, written by orjson (2.5x faster on a first plan of 2,000 Services, ~10^5
    field changes) where the two agree, which is everywhere but the float forms above,
    integers beyond 64 bits (orjson refuses them) and NaN/Infinity (orjson writes null, as
    in the plan's JSON output). Written and hashed piece by piece (:func:`compact_pieces`)."""
    sha = hashlib.sha256()
    try:
        for piece in compact_pieces(body):
            if float_forms_differ(piece):
                return standard_digest(body)
            sha.update(piece)
    except orjson.JSONEncodeError:
        return standard_digest(body)
    return sha.hexdigest()


def check_expected(plan: Plan, expected: str) -> None:
    """``apply --expect-plan DIGEST``: refuse if the plan is not the one reviewers saw.

    A prefix of at least 12 hex digits is accepted, like a short commit sha.
    """
    expected = expected.strip().lower()
    if len(expected) < 12 or not plan.digest.startswith(expected):
        raise PlanChanged(
            f"the plan changed since it was reviewed: expected {expected[:12]}, now {plan.digest[:12]}",
            detail=("run `gitorch plan` again and review the new plan",),
        )

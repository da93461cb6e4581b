"""Helpers for the API tests: a stub DaemonHandle, a raw HTTP client, a strict
Prometheus text-format parser."""

from __future__ import annotations

import http.client
import json
import math
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gitorch.api.metrics import Metrics
from gitorch.diff import Plan
from gitorch.diff.fields import FieldChange
from gitorch.diff.plan import ObjectChange, PlacementItem
from gitorch.errors import NothingToShow, NotNow
from gitorch.state.audit_chain import ChainEntry

#: The webhook secret the `server` fixture is started with.
SECRET = b"It's a Secret to Everybody"

SHA = "3f2a9c1e5b7d4a6f8e0c2b4d6f8a0c1e3b5d7f9a"

STATUS = {
    "revision": SHA,
    "lastError": None,
    "services": [
        {
            "name": "web",
            "revision": SHA,
            "replicas": {"desired": 3, "ready": 3, "updated": 3},
            "rollout": {"phase": "Healthy", "step": None, "weight": 100},
            "instances": [],
        }
    ],
}

#: What the stub's plan answers: web's image changes and its new replica lands on node-a.
PLAN = Plan(
    revision=SHA,
    base_revision=None,
    path="deploy",
    changes=(
        ObjectChange(
            "Service", "web", "update", (FieldChange("change", "spec.image", "web:1", "web:2"),)
        ),
    ),
    drift=(),
    placements=(PlacementItem("web", "web-1", "node-a"),),
    unschedulable=(),
    order=(("web",),),
)
#: The audit chain's one entry.
CHAIN_ENTRY = ChainEntry(
    1, 1764000000.125, "revision.started", "v1", "gitorch", None, SHA, {"n": 1}, "0" * 64, "f" * 64
)
#: The plan of ref "unchanged": nothing to do.
UNCHANGED_PLAN = Plan(SHA, SHA, "deploy", (), (), (), (), (("web",),), unchanged=("Service/web",))


class StubLogStream:
    """A followed log whose events the test sends (:meth:`send`); records its close."""

    def __init__(self, service: str, replica: str | None, tail: int) -> None:
        self.asked = (service, replica, tail)
        self.closed = threading.Event()
        self._events: queue.Queue[dict[str, str]] = queue.Queue()

    def send(self, event: dict[str, str]) -> None:
        self._events.put(event)

    def events(self, quiet: float = 15.0) -> Iterator[dict[str, str] | None]:
        last = time.monotonic()
        while not self.closed.is_set():
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() - last < quiet:
                    continue
                event = None
            last = time.monotonic()
            yield event

    def close(self) -> None:
        self.closed.set()


@dataclass
class StubHandle:
    """A DaemonHandle that records calls; behaviour is switched by plain attributes."""

    metrics: Metrics = field(default_factory=Metrics)
    ok: bool = True
    reason: str = ""
    plan_error: Exception | None = None
    status_hook: Callable[[], object] | None = None
    triggers: list[str] = field(default_factory=list)
    history_calls: list[tuple[str | None, int]] = field(default_factory=list)
    plan_calls: list[str | None] = field(default_factory=list)
    drains: list[tuple[str, bool, str | None]] = field(default_factory=list)
    log_calls: list[tuple[str, str | None, int, bool]] = field(default_factory=list)
    audit_calls: list[tuple[str | None, str | None, float | None, int | None]] = field(
        default_factory=list
    )
    actions: list[tuple[str, str]] = field(default_factory=list)
    followed: list[StubLogStream] = field(default_factory=list)
    resets: list[tuple[str, str | None]] = field(default_factory=list)
    actors: list[str | None] = field(default_factory=list)  # of triggers and actions, in order
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        if self.status_hook is not None:
            self.status_hook()
        return STATUS

    def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            self.history_calls.append((service, limit))
        return [{"revision": SHA, "result": "succeeded", "service": service, "limit": limit}]

    def scaling(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    def plan(self, ref: str | None) -> Plan:
        with self._lock:
            self.plan_calls.append(ref)
        if self.plan_error is not None:
            raise self.plan_error
        return PLAN if ref != "unchanged" else UNCHANGED_PLAN

    def audit_events(
        self, service: str | None, kind: str | None, since: float | None, limit: int | None
    ) -> list[dict[str, Any]]:
        with self._lock:
            self.audit_calls.append((service, kind, since, limit))
        return [{"id": 1, "kind": "revision.started"}]

    def audit_chain(self) -> tuple[list[ChainEntry], int | None]:
        return [CHAIN_ENTRY], 1

    def service_logs(
        self, service: str, replica: str | None, tail: int, previous: bool
    ) -> dict[str, Any]:
        if service == "nope":
            raise NothingToShow("no service nope (services: web)")
        with self._lock:
            self.log_calls.append((service, replica, tail, previous))
        return {"replicas": [], "warnings": []}

    def follow_logs(self, service: str, replica: str | None, tail: int) -> StubLogStream:
        if service == "nope":
            raise NothingToShow("no service nope (services: web)")
        stream = StubLogStream(service, replica, tail)
        with self._lock:
            self.followed.append(stream)
        return stream

    def reset_volume(self, name: str, actor: str | None) -> str:
        if name == "nope":
            raise NothingToShow("no volume named 'nope'")
        if name == "data":
            raise NotNow("volume data is not missing (Bound on node-a): ...")
        with self._lock:
            self.resets.append((name, actor))
        return f"volume {name} reset: the next pass makes it anew, empty"

    def drain(self, node: str, draining: bool, actor: str | None) -> tuple[bool, str]:
        if node != "node-a":
            return False, f"no node named {node}"
        with self._lock:
            self.drains.append((node, draining, actor))
        return True, f"node {node} {'draining' if draining else 'schedulable again'}"

    def nodes(self) -> list[dict[str, Any]]:
        return [{"name": "node-a", "condition": "Ready"}]

    def trigger(self, reason: str, actor: str | None = None) -> None:
        with self._lock:
            self.triggers.append(reason)
            self.actors.append(actor)

    def request_action(
        self, service: str, action: str, actor: str | None = None
    ) -> tuple[bool, str]:
        self.actions.append((service, action))
        self.actors.append(actor)
        if service == "web":
            return True, f"{action} of web requested"
        return False, f"{service} has no rollout"

    def healthy(self) -> tuple[bool, str]:
        return self.ok, self.reason


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One request on a fresh connection (http.client, so nothing is hidden); over TLS
    with ``tls`` (a client context)."""
    conn = (
        http.client.HTTPSConnection(address[0], address[1], timeout=timeout, context=tls)
        if tls is not None
        else http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes: for requests http.client won't make."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- a strict parser of the Prometheus text exposition format 0.0.4 ----------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})? (\S+)( -?\d+)?$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    inner = text[1:-1]
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        match = _LABEL_PAIR.match(inner, pos)
        assert match, f"bad label syntax at {inner[pos:]!r}"
        name, value = match.group(1), _unescape(match.group(2))
        assert name not in labels, f"duplicate label {name}"
        labels[name] = value
        pos = match.end()
        if pos < len(inner):
            assert inner[pos] == ",", f"expected ',' in {inner!r}"
            pos += 1
    return labels


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+)", text), f"bad value {text!r}"
    return float(text)


def parse_prometheus(text: str) -> dict[str, Family]:
    """Parse and check ``text``; raise AssertionError on anything the format forbids."""
    assert text.endswith("\n"), "the exposition must end with a line feed"
    families: dict[str, Family] = {}
    current: Family | None = None
    pending_help: tuple[str, str] | None = None
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):
        assert line, "empty line"
        if line.startswith("# HELP "):
            match = _HELP.match(line)
            assert match, line
            assert match.group(1) not in families, f"second HELP for {match.group(1)}"
            pending_help = (match.group(1), match.group(2))
            continue
        if line.startswith("# TYPE "):
            match = _TYPE.match(line)
            assert match, line
            name = match.group(1)
            assert name not in families, f"second TYPE for {name}"
            assert pending_help and pending_help[0] == name, f"TYPE {name} without its HELP"
            current = families[name] = Family(name, match.group(2), pending_help[1])
            pending_help = None
            continue
        assert not line.startswith("#"), f"unexpected comment {line!r}"
        match = _SAMPLE.match(line)
        assert match, f"bad sample line {line!r}"
        name, labels = match.group(1), _labels(match.group(2))
        assert current is not None, f"sample {name} before any TYPE"
        allowed = {current.name}
        if current.type == "histogram":
            allowed = {f"{current.name}_bucket", f"{current.name}_sum", f"{current.name}_count"}
        assert name in allowed, f"sample {name} outside its family {current.name}"
        series = (name, tuple(sorted(labels.items())))
        assert series not in seen_series, f"duplicate series {series}"
        seen_series.add(series)
        current.samples.append((name, labels, _value(match.group(3))))
    for family in families.values():
        if family.type == "histogram":
            check_histogram(family)
        if family.type == "counter":
            assert all(v >= 0 for _, _, v in family.samples), family.name
    return families


def check_histogram(family: Family) -> None:
    """Buckets cumulative and ordered by le, ending at +Inf == _count, per label set."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for name, labels, value in family.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        group = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name.endswith("_bucket"):
            assert "le" in labels, f"bucket without le in {family.name}"
            group["buckets"].append((_value(labels["le"]), value))
        elif name.endswith("_sum"):
            group["sum"] = value
        else:
            group["count"] = value
    for rest, group in groups.items():
        buckets = group["buckets"]
        assert buckets, f"{family.name}{rest}: no buckets"
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), bounds
        assert math.isinf(bounds[-1]), f"{family.name}: last bucket is not +Inf"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{family.name}: buckets not cumulative {counts}"
        assert group["count"] == counts[-1], f"{family.name}: _count != +Inf bucket"
        assert group["sum"] is not None, f"{family.name}: no _sum"

"""Which backend serves a request or a connection (pure: no sockets, no clock of its own).

Backends are chosen in two steps (:meth:`Chooser.choose_version`, then
:meth:`Chooser.pick`): first the version (``Route.rules``, then a sticky cookie, then
``Route.weights`` by smooth weighted round robin over versions, so 10% is exactly 10 of
every 100 requests), then a backend of that version by smooth weighted round robin over
``Backend.weight`` (the nginx algorithm: even spread, no bursts). A version that has a
weight but no active backend gets nothing: its share goes to the other versions, so no
request gets a 503 while any active backend exists. ``tcp`` routes apply ``weights`` per
connection; rules and stickiness need an HTTP request and do not apply to them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gitorch.traffic.routes import sticky_cookie
from gitorch.traffic.table import Backend, Route, VersionRule


class RequestHead(Protocol):
    """What choosing needs of a request: its header values by lower-case name."""

    def all(self, name: str) -> list[str]: ...


def parse_cookies(head: RequestHead) -> dict[str, str]:
    """Cookies of a request (every Cookie header); the first of a repeated name wins."""
    found: dict[str, str] = {}
    for value in head.all("cookie"):
        for part in value.split(";"):
            name, sep, val = part.strip().partition("=")
            if sep and name and name not in found:
                found[name] = val.strip().strip('"')
    return found


@dataclass(frozen=True)
class Rule:
    """A :class:`VersionRule` ready to test requests (regex compiled once)."""

    rule: VersionRule
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, rule: VersionRule) -> Rule:
        return cls(rule, re.compile(rule.regex) if rule.regex is not None else None)

    def matches(self, head: RequestHead, cookies: Mapping[str, str]) -> bool:
        """Exact and regex (full match) must both hold when both are given; with
        neither, the header or cookie being present is enough."""
        if self.rule.header is not None:
            values = head.all(self.rule.header.lower())
        else:
            cookie = cookies.get(self.rule.cookie or "")
            values = [] if cookie is None else [cookie]
        return any(self._value_matches(v) for v in values)

    def _value_matches(self, value: str) -> bool:
        if self.rule.exact is not None and value != self.rule.exact:
            return False
        return self.pattern is None or self.pattern.fullmatch(value) is not None


class Candidate:
    """One backend as the chooser sees it; a data plane adds what it counts."""

    __slots__ = ("backend", "removed", "current", "down_until")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.removed = False
        self.current = 0  # smooth weighted round robin state
        self.down_until = 0.0  # refused a connection: passed over until then

    @property
    def accepting(self) -> bool:
        return not self.removed and not self.backend.draining


C = TypeVar("C", bound=Candidate)


class Chooser(Generic[C]):
    """The backends of one route and the state of its round robins.

    ``make`` builds the per-backend object (a :class:`Candidate` the data plane extends).
    """

    def __init__(self, route: Route, make: Callable[[Backend], C]) -> None:
        self.route = route
        self._make = make
        self.backends: dict[str, C] = {}
        self.active: list[C] = []
        self.by_version: dict[str, list[C]] = {}  # active ones
        self.rules: tuple[Rule, ...] = ()
        self.version_current: dict[str, int] = {}  # smooth WRR over versions
        self.cookie_name = sticky_cookie(route.service)

    def set_route(self, route: Route) -> list[C]:
        """Take ``route``'s backend list; returns the backends that left it (now marked
        ``removed``, still in :attr:`backends`: the caller forgets them when idle)."""
        self.route = route
        seen: set[str] = set()
        for backend in route.backends:
            seen.add(backend.id)
            state = self.backends.get(backend.id)
            if state is None:
                self.backends[backend.id] = self._make(backend)
            else:
                state.backend = backend
                state.removed = False
        left: list[C] = []
        for backend_id, state in self.backends.items():
            if backend_id not in seen:
                state.removed = True
                left.append(state)
        self.active = [s for s in self.backends.values() if s.accepting and s.backend.weight > 0]
        self.by_version = {}
        for state in self.active:
            self.by_version.setdefault(state.backend.version, []).append(state)
        if len(self.rules) != len(route.rules) or any(
            r.rule != n for r, n in zip(self.rules, route.rules, strict=False)
        ):
            self.rules = tuple(Rule.of(rule) for rule in route.rules)
        if set(self.version_current) != set(route.weights):
            # New versions: restart the cycle, so shares are exact from this apply on.
            self.version_current = dict.fromkeys(route.weights, 0)
        self.cookie_name = sticky_cookie(route.service)
        return left

    def choose_version(self, head: RequestHead | None) -> tuple[str | None, str | None]:
        """The version for one request (``head``) or tcp connection (None), and the
        version to put in the sticky cookie (None: leave the client's cookie alone).

        None as the version means "any active backend by its own weight": the route has
        no weights, or no weighted version has an active backend (the fallback that
        keeps serving while anything can serve).
        """
        route = self.route
        cookies: Mapping[str, str] = {}
        if head is not None:
            if self.rules or route.sticky:
                cookies = parse_cookies(head)
            for rule in self.rules:
                if self.by_version.get(rule.rule.version) and rule.matches(head, cookies):
                    return rule.rule.version, None
        if not route.weights:
            return None, None
        if head is not None and route.sticky:
            held = cookies.get(self.cookie_name)
            if held is not None and route.weights.get(held, 0) > 0 and self.by_version.get(held):
                return held, None
        chosen = self._weighted_version()
        sticky = chosen if head is not None and route.sticky and chosen is not None else None
        return chosen, sticky

    def _weighted_version(self) -> str | None:
        """Smooth weighted round robin over versions with a weight and a backend."""
        total = 0
        best: str | None = None
        for version, weight in self.route.weights.items():
            if weight <= 0 or not self.by_version.get(version):
                continue
            current = self.version_current.get(version, 0) + weight
            self.version_current[version] = current
            total += weight
            if best is None or current > self.version_current[best]:
                best = version
        if best is not None:
            self.version_current[best] -= total
        return best

    def pick(self, tried: AbstractSet[str], version: str | None = None, *, now: float) -> C | None:
        """Smooth weighted round robin over active backends of ``version`` (any version
        when None) not yet tried; then over any active backend not tried (a retry may
        leave the version rather than fail); then all of them. Backends not in cooldown
        at ``now`` (``down_until``) are preferred."""
        pool = self.active if version is None else self.by_version.get(version, [])
        if not tried:  # the first try of a request (the common case: no list to build)
            candidates = pool or self.active
        else:
            candidates = (
                [s for s in pool if s.backend.id not in tried]
                or [s for s in self.active if s.backend.id not in tried]
                or self.active
            )
        if not candidates:
            return None
        total = 0
        best: C | None = None
        for state in candidates:
            if state.down_until > now:
                continue  # in cooldown
            weight = state.backend.weight
            current = state.current = state.current + weight
            total += weight
            if best is None or current > best.current:
                best = state
        if best is None:  # every candidate is in cooldown: then any of them
            return self.pick(tried, version, now=math.inf)
        best.current -= total
        return best

    def attempts(self) -> int:
        """How many backends one request may try."""
        return max(2, len(self.active))

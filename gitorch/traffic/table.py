"""The routing table: which backends serve each exposed service (pure data).

The reconciler computes a :class:`RoutingTable` from ready replicas; a data plane (the
built-in load balancer, ``gitorch proxy``, or HAProxy) serves it. Keeping the table apart from the
proxy is what lets several data planes serve the same decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from gitorch.traffic.figures import BackendFigures, VersionFigures


@dataclass(frozen=True)
class Backend:
    """One replica that may receive traffic."""

    id: str  # the replica's runtime instance id
    address: str  # host:port where the replica listens
    version: str = ""  # template digest (short) of what it runs: for per-version figures
    weight: int = 100  # relative weight within its version group
    draining: bool = False  # gets no new connections/requests; in-flight ones finish
    #: Its node stopped answering (cut off the network): it gets nothing new (it is
    #: draining too), and the requests in flight on it are given up at once, the
    #: idempotent ones retried on another backend, rather than left to time out.
    unreachable: bool = False

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class VersionRule:
    """Requests whose header or cookie matches go to ``version`` (A/B tests, canaries)."""

    version: str
    header: str | None = None  # header name (case-insensitive)
    cookie: str | None = None  # cookie name
    exact: str | None = None
    regex: str | None = None  # full match


@dataclass(frozen=True)
class TlsFiles:
    """A route's certificate chain and private key (PEM files). In a table from the
    reconciler they are names under the operator's secrets directory, as the manifest
    gives them; the data plane's client resolves them to paths before serving."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class Route:
    """A service's stable endpoint: where clients connect, and the backends behind it.

    Traffic between versions (``Backend.version``): ``rules`` first (first match wins);
    then, with ``sticky``, the version a client was given before (a cookie), while that
    version's weight is above 0; then ``weights`` (version -> integer percent; empty: every
    active backend by its own weight). Within a version, backends share by ``Backend.weight``.
    """

    service: str
    port: int  # listen port (spec.expose.port, or a blue-green preview port)
    protocol: str = "http"  # http (L7: per request) | tcp (L4: per connection)
    backends: tuple[Backend, ...] = ()
    weights: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    rules: tuple[VersionRule, ...] = ()
    sticky: bool = False
    tls: TlsFiles | None = None  # http only: terminate TLS with these files

    def active(self) -> tuple[Backend, ...]:
        """Backends that may take new traffic."""
        return tuple(b for b in self.backends if not b.draining)


@dataclass(frozen=True)
class Fence:
    """What a remote host's ingress does when the daemon falls silent.

    A host cut off the network keeps serving its own clients from its own replicas; once
    it has heard nothing (no table) for ``after`` seconds, the daemon will have replaced
    those replicas elsewhere, so the ingress withdraws them (``own``: their backend ids)
    from every route that has a backend on another host, and routes there instead. When
    the link comes back, the replicas it kept are stale copies: they never take a request
    through it. A daemon that is merely gone costs nothing: every ingress still reaches
    every other host's replicas.
    """

    after: float
    own: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RoutingTable:
    routes: Mapping[str, Route] = field(default_factory=lambda: MappingProxyType({}))
    #: Remote hosts' ingresses only (see :class:`Fence`); None: never fenced.
    fence: Fence | None = None

    def endpoints(self) -> dict[str, int]:
        """service -> listen port."""
        return {name: route.port for name, route in self.routes.items()}


@dataclass(frozen=True)
class BackendStats:
    """What the data plane knows of one backend right now."""

    in_flight: int  # open connections (tcp) or requests being served (http)
    requests: int = 0  # total handled
    errors: int = 0  # 5xx responses or failed connections

    @staticmethod
    def total(parts: Iterable[BackendStats | None]) -> BackendStats | None:
        """One backend's figures counted in several places (worker processes, hosts'
        ingresses) added up; None when no place knows it."""
        known = [p for p in parts if p is not None]
        if not known:
            return None
        return BackendStats(
            in_flight=sum(p.in_flight for p in known),
            requests=sum(p.requests for p in known),
            errors=sum(p.errors for p in known),
        )


@dataclass(frozen=True)
class DataPlaneHealth:
    """Whether a data plane serves, and what it is (for logs, status and /healthz)."""

    kind: str  # builtin | proxy | haproxy
    ok: bool
    message: str = ""
    pid: int | None = None  # the serving process, when it is not the caller's
    since: float | None = None  # wall time its figures count from


def serving_backends(routes: Iterable[Route]) -> frozenset[str]:
    """Ids of the backends ``routes`` send new requests to: neither draining nor
    unreachable. A table lists a replica that way only once a daemon judged it ready."""
    return frozenset(
        backend.id
        for route in routes
        for backend in route.backends
        if not backend.draining and not backend.unreachable
    )


class DataPlane(Protocol):
    """Serves a routing table. Implementations must apply a new table without dropping
    connections to backends that stay, and must never send new traffic to a draining or
    removed backend once :meth:`apply` returns. Every method is safe to call from several
    threads (the daemon applies on its loop while API threads read figures)."""

    def apply(self, table: RoutingTable) -> None:
        """Make ``table`` the one served (listeners opened/closed, backends changed)."""
        ...

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        """In-flight and total figures for one backend (None when unknown)."""
        ...

    def figures(self, service: str) -> list[BackendFigures]:
        """Cumulative figures of every backend of ``service`` serving now (empty if
        unknown)."""
        ...

    def version_figures(self, service: str) -> dict[str, VersionFigures]:
        """Per-version totals of ``service`` that only grow (a replaced backend's counts
        stay: :class:`~gitorch.traffic.ledger.VersionLedger`); what analyses and
        ``/metrics`` read."""
        ...

    def health(self) -> DataPlaneHealth:
        """Whether it serves now."""
        ...

    def serving(self) -> frozenset[str] | None:
        """Ids of the backends it sends new requests to now (:func:`serving_backends`),
        None when it cannot say. A daemon that starts judges those replicas as ready
        ones (its first probe of them is not their only chance)."""
        ...

    def close(self) -> None:
        """Let go of the data plane: one that lives in the caller's process stops serving;
        one that outlives it (``gitorch proxy``, HAProxy) keeps serving its last table."""
        ...

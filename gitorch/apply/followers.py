"""With etcd state, every daemon's host serves the leader's routing table.

Daemons on several hosts share one etcd namespace; one leads. Its host's data plane is
the one it drives; the others used to keep whatever table they last had (a standby opened
no data plane), so clients had to be pointed at the leader's host alone. Now:

* the leader stores each table it publishes in etcd (``dataplane/table``, a fenced write,
  compressed: 2,000 routes would pass etcd's request limit as plain JSON), named by an id
  and by the place it was applied (host, runtime directory);
* a standby whose place differs (another host, or another runtime directory) *follows*:
  it starts or adopts its own host's proxy, applies every table stored (a route whose
  port cannot be bound there is left out there alone), waits until its proxy has no
  request in flight to the backends the table drains, and says so in its member record
  (``table: {id, error}``). A standby sharing the leader's runtime directory shares its
  proxy, which the leader drives: it does nothing.
* the leader's drain counts a follower that has not taken the current table as a request
  in flight (:class:`FollowedDataPlane`), so a leaving replica is stopped once every live
  follower stopped sending it requests, or at the drain timeout. A follower that died
  leaves the members with its lease (the TTL); one whose proxy fails answers with the
  error and is not waited for (it serves nothing).
* a table etcd did not take is stored again (the drain asks, and each pass) until it
  is; meanwhile every follower counts as behind.

A host whose daemon is gone keeps following through the daemon's stand-in, a process
that runs a :class:`TableFollower` of its own (:mod:`gitorch.apply.standin`).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gitorch.apply.drain import wait_drained
from gitorch.errors import GitorchError
from gitorch.state.etcd.tables import FOLLOWS_FIELD, TABLE_KEY, TAKEN_FIELD, Place, taken
from gitorch.traffic.routes import ListenError
from gitorch.traffic.table import (
    BackendStats,
    DataPlane,
    DataPlaneHealth,
    RoutingTable,
)
from gitorch.traffic.wire import WireError, table_from_json, table_to_json

if TYPE_CHECKING:  # etcd's client loads only with etcd state
    from gitorch.state.etcd.backend import EtcdBackend
    from gitorch.state.etcd.election import Leadership

log = logging.getLogger("gitorch.followers")

#: How often a follower reads the table key's revision (its value only when it changed)
#: when it cannot watch it (etcd failing), and while it leads.
FOLLOW_POLL = 0.05
#: A follower watches the table key for this long at a time (then looks again anyway: a
#: refused table's retry, a stop).
WATCH_WAIT = 0.5
#: How long the leader's answer about followers is reused (a drain asks for each leaving
#: backend at once; once read, a follower's acknowledgement is seen within this).
LAG_CACHE = 0.01
#: Seconds before a table this host's data plane refused is applied again.
RETRY_FAILED = 1.0
#: A follower that has not taken a table for this long is named in the leader's log.
LAG_WARNING = 5.0
#: Seconds between the leader's tries to store a table etcd refused (a drain asks often).
RETRY_STORE = 0.5


@dataclass(frozen=True)
class StoredTable:
    """The table a leader published, as stored in etcd."""

    id: str
    leader: str
    place: Place
    table: RoutingTable

    def to_json(self, canonical: str | None = None) -> dict[str, Any]:
        """The stored form; ``canonical``: the table's canonical JSON when already made."""
        packed = zlib.compress((canonical or _canonical(self.table)).encode(), 6)
        return {
            "id": self.id,
            "leader": self.leader,
            "place": self.place.to_json(),
            "table": base64.b64encode(packed).decode("ascii"),
        }

    @staticmethod
    def from_json(data: Any) -> StoredTable:
        if not isinstance(data, Mapping):
            raise WireError("the stored routing table is not an object")
        try:
            place = data["place"]
            raw = zlib.decompress(base64.b64decode(str(data["table"])))
            return StoredTable(
                str(data["id"]),
                str(data["leader"]),
                Place.from_json(place),
                table_from_json(json.loads(raw)),
            )
        except (KeyError, IndexError, TypeError, ValueError, zlib.error) as exc:
            raise WireError(f"the stored routing table cannot be read: {exc!r}") from exc


def _canonical(table: RoutingTable) -> str:
    return json.dumps(table_to_json(table), sort_keys=True, separators=(",", ":"))


class TablePublisher:
    """The leader's side: stores each table it applies, and says which followers have
    not taken the last one yet."""

    def __init__(
        self,
        backend: EtcdBackend,
        leadership: Leadership,
        place: Place,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.leadership = leadership
        self.place = place
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._stored: tuple[str, str] | None = None  # (id, term and canonical table)
        self._stored_at = 0.0
        self._lag: tuple[float, tuple[str, ...]] | None = None
        self._warned: set[tuple[str, str]] = set()
        # The last table applied here that etcd refused, tried again (retry()) until it
        # is stored: until then every follower serves an older one.
        self._unstored: RoutingTable | None = None
        self._retry_at = 0.0
        self._members: list[dict[str, Any]] = []  # the last read, for when etcd fails

    def store(self, table: RoutingTable) -> None:
        """Store ``table`` for the followers (once per distinct table and term). A store
        that fails is logged and tried again by :meth:`retry` (the leader's drain asks,
        and each pass): until then the followers keep the table before it, and all of
        them count as behind."""
        try:
            term = self.leadership.fence().create_revision
            # Once per term: after another daemon led meanwhile, the key holds its table.
            canonical = _canonical(table)
            key = f"{term}:{canonical}"
            with self._lock:
                if self._stored is not None and self._stored[1] == key:
                    self._unstored = None
                    return
            ident = f"{self.leadership.name}-{uuid.uuid4().hex[:12]}"
            value = StoredTable(ident, self.leadership.name, self.place, table).to_json(canonical)
            self.backend.atomic(lambda: self.backend.put(TABLE_KEY, value))
        except GitorchError as exc:
            with self._lock:
                first = self._unstored is None
                self._unstored = table
                self._retry_at = self.monotonic() + RETRY_STORE
                self._lag = None
            if first:
                log.warning(
                    "the routing table was not stored for the other hosts (tried again until "
                    "it is; their proxies serve the one before): %s",
                    exc.message,
                )
            return
        with self._lock:
            if self._unstored is not None:
                log.info("the routing table was stored for the other hosts")
            self._unstored = None
            self._stored = (ident, key)
            self._stored_at = self.monotonic()
            self._lag = None
            self._warned.clear()  # followers late on an older table: said already

    def retry(self) -> None:
        """Store again the last table etcd refused (at most every :data:`RETRY_STORE`
        seconds, and only while this daemon leads)."""
        with self._lock:
            table = self._unstored
            if table is None or self.monotonic() < self._retry_at:
                return
        if not self.leadership.leading:
            with self._lock:
                self._unstored = None  # the leader now stores its own
            return
        self.store(table)

    def lagging(self) -> tuple[str, ...]:
        """The followers (live standbys at another place) that have not taken the last
        stored table, by name; answered from one read of the members at most every
        :data:`LAG_CACHE` seconds."""
        self.retry()
        now = self.monotonic()
        with self._lock:
            stored = self._stored
            unstored = self._unstored is not None
            if stored is None and not unstored:
                return ()
            if self._lag is not None and now - self._lag[0] < LAG_CACHE:
                return self._lag[1]
        try:
            members = self.leadership.members()
            with self._lock:
                self._members = members
        except GitorchError as exc:
            # The followers read last are still counted: an etcd that does not answer
            # says nothing about the proxies that serve.
            log.warning("the other hosts' tables were not read: %s", exc.message)
            with self._lock:
                members = self._members
        # With the last table unstored, no follower has it.
        current = None if unstored or stored is None else stored[0]
        behind = tuple(
            sorted(
                str(m.get("name"))
                for m in members
                if self.follows(m) and (current is None or taken(m)[0] != current)
            )
        )
        with self._lock:
            self._lag = (now, behind)
            # (an unstored table was said when etcd refused it)
            late = current is not None and now - self._stored_at > LAG_WARNING
        for name in behind:
            if late and (name, current) not in self._warned:
                self._warned.add((name, str(current)))
                log.warning(
                    "daemon %s has not taken the routing table of %.0f s ago: its host's "
                    "proxy may still send requests to replicas that leave",
                    name,
                    now - self._stored_at,
                )
        return behind

    def follows(self, member: Mapping[str, Any]) -> bool:
        """Whether ``member`` is a follower this leader waits for."""
        return (
            member.get("name") != self.leadership.name
            and bool(member.get(FOLLOWS_FIELD))
            and Place.of(member) != self.place
        )


class FollowedDataPlane:
    """The leader's data plane (``inner``) whose tables the followers take too: each
    applied table is stored for them, and the drain counts a follower that has not
    taken the current one as a request in flight on every backend (see the module
    docstring). ``writer`` is the lock a follower of this place applies under, so a
    table it read before this daemon led never lands after this daemon's own."""

    def __init__(self, inner: DataPlane, publisher: TablePublisher, writer: threading.Lock) -> None:
        self.inner = inner
        self.publisher = publisher
        self.writer = writer

    def apply(self, table: RoutingTable) -> None:
        with self.writer:
            self.inner.apply(table)
        self.publisher.store(table)

    def backend_stats(self, service: str, backend_id: str) -> BackendStats | None:
        here = self.inner.backend_stats(service, backend_id)
        behind = self.publisher.lagging()
        if not behind:
            return here
        return BackendStats.total([here, BackendStats(in_flight=len(behind))])

    def figures(self, service: str) -> list[Any]:
        return self.inner.figures(service)

    def version_figures(self, service: str) -> dict[str, Any]:
        return self.inner.version_figures(service)

    def health(self) -> DataPlaneHealth:
        return self.inner.health()

    def serving(self) -> frozenset[str] | None:
        return self.inner.serving()

    def close(self) -> None:
        self.inner.close()


class TableFollower:
    """A standby's side: applies the leader's stored tables to this host's data plane."""

    def __init__(
        self,
        backend: EtcdBackend,
        leadership: Leadership,
        place: Place,
        plane: Callable[[], DataPlane],
        writer: threading.Lock,
        *,
        drain_timeout: float = 10.0,
        poll: float = FOLLOW_POLL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.leadership = leadership
        self.place = place
        self.plane = plane
        self.writer = writer
        self.drain_timeout = drain_timeout
        self.poll = poll
        self.monotonic = monotonic
        self.taken: str | None = None  # the id of the table this host took last
        self._seen = 0  # the key's revision when it was taken
        self._observed = 0  # the key's revision last read (watched from the next one)
        self._retry_at = 0.0  # a table this data plane refused is tried again from then
        self._said: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="gitorch-table-follower", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.drain_timeout + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wait_for_a_table()
            if self._stop.is_set():
                return
            try:
                self.step()
            except GitorchError as exc:
                self._say(f"the leader's routing table was not followed: {exc.message}")
            except Exception:  # a bug must not end the following: log it, keep going
                log.exception("following the leader's routing table crashed; going on")

    def wait_for_a_table(self) -> None:
        """Until the table key changes (a watch: the take starts as the leader's write
        lands), for :data:`WATCH_WAIT` at most; a poll's pause while this daemon leads,
        before a first table, or when etcd does not answer the watch."""
        if self.leadership.leading or self._observed == 0:
            self._stop.wait(self.poll)
            return
        try:
            self.backend.wait_for_change(TABLE_KEY, self._observed, WATCH_WAIT)
        except GitorchError:
            self._stop.wait(self.poll)  # the read says what is wrong, to another member

    def step(self) -> None:
        """One round: take the stored table when it is new (and this daemon does not
        lead, and the leader's proxy is not this host's own)."""
        if self.leadership.leading:
            self.taken = None  # on stepping down, the table stored then is taken anew
            self._seen = 0
            return
        revision = self.backend.revision_of(TABLE_KEY)
        refused_again = revision == self._observed and self.monotonic() < self._retry_at
        self._observed = revision
        if revision == self._seen:
            return  # unchanged: its value (hundreds of KB for thousands of routes) not read
        if refused_again:
            return  # the table this data plane refused: tried again each second
        raw = self.backend.peek(TABLE_KEY)
        if raw is None:
            return
        stored = StoredTable.from_json(raw)
        if stored.id == self.taken:
            self._seen = revision
            return
        if stored.place == self.place:
            self.taken = stored.id  # the leader of this place drives this proxy itself
            self._seen = revision
            return
        with self.writer:
            if self.leadership.leading:
                return
            took, error = self._apply(stored.table)
        self._say(error)
        if took:
            self._drain(stored.table)
            self.taken = stored.id
            self._seen = revision
        else:  # tried again each second (not each poll) until the data plane takes it
            self._retry_at = self.monotonic() + RETRY_FAILED
        # Acknowledged either way (after the drain): a host whose data plane failed
        # serves nothing for the leader to wait on.
        self.leadership.update_info(**{TAKEN_FIELD: {"id": stored.id, "error": error}})

    def _apply(self, table: RoutingTable) -> tuple[bool, str | None]:
        """Apply ``table`` here: a route whose port cannot be opened here is left out
        (the others are served). Whether the data plane took it, and what went wrong
        (None when nothing did)."""
        routes = dict(table.routes)
        failed: dict[str, str] = {}
        for _ in range(3):
            try:
                self.plane().apply(RoutingTable(routes))
            except ListenError as exc:
                refused = dict(exc.routes) or {name: exc.message for name in routes}
                failed.update(refused)
                for name in refused:
                    routes.pop(name, None)
                continue
            except GitorchError as exc:
                return False, f"this host's data plane did not take the table: {exc.message}"
            if failed:
                return True, "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            return True, None
        return False, "this host's data plane kept refusing ports: " + "; ".join(
            f"{name}: {why}" for name, why in sorted(failed.items())
        )

    def _drain(self, table: RoutingTable) -> None:
        """Wait (bounded) until no request is in flight here to a backend ``table`` drains."""
        wait_drained(
            self.plane(),
            [(n, b.id) for n, route in table.routes.items() for b in route.backends if b.draining],
            self.monotonic() + self.drain_timeout,
            self.monotonic,
            self._stop.is_set,
        )

    def _say(self, error: str | None) -> None:
        if error != self._said and error is not None:
            log.warning("%s", error)
        self._said = error

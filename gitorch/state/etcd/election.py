"""Leader election on etcd: several daemons, one leader, and a fence for its writes.

Each daemon holds a lease (TTL 5 s by default, renewed every sixth of it) and, attached to
it, ``members/NAME`` (who it is, where its API listens). The leader is the daemon whose
lease holds ``election/leader``: a daemon campaigns with a ``Txn`` that creates the key
only if it does not exist (create revision 0), the recipe of etcd's own election API. The
key's *create revision* is the leader's fence (:class:`~.backend.Fence`): every write of
the leader is a ``Txn`` conditioned on the key still having that create revision, so
once the lease expired (the leader was paused, cut off, or killed) and another daemon
created the key anew, nothing the old leader sends can land.

A leader also keeps a local deadline: the time its last successful keep-alive was *sent*
plus the TTL, less a margin. etcd cannot expire the lease before then, so while the
deadline holds the daemon may act on the world (start and stop replicas, publish routes);
after it, it stops acting at once, before etcd even decides (a process woken from
SIGSTOP finds its deadline long past). It steps down by itself: the keep-alive of an
expired lease answers TTL -1, and it campaigns again as a standby with a new lease.

When etcd loses its quorum no keep-alive succeeds: the leader stops acting once its
deadline passes (``message`` says why) and every daemon keeps trying; when the quorum is
back, the lease may even still hold (etcd extends leases across its own leader changes),
and the daemon that holds the key resumes without a restart.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitorch.errors import ConfigError, StateError
from gitorch.processes import process_alive
from gitorch.state.errors import NotLeader
from gitorch.state.etcd.backend import EtcdBackend, Fence, dump, load
from gitorch.state.etcd.client import b64
from gitorch.state.etcd.tables import TABLE_KEY, table_state

log = logging.getLogger("gitorch.leadership")

LEADER_KEY = "election/leader"
MEMBERS_PREFIX = "members/"
#: A member record's field naming the daemon a stand-in keeps the host's table for.
STANDS_IN_FIELD = "standsInFor"

#: Default lease TTL (seconds): a killed leader is replaced within about this long.
DEFAULT_TTL = 5.0

#: Seconds between a leader's failed renewal and the next try (the deadline still holds).
RETRY_AFTER = 0.1


@dataclass(frozen=True)
class LeaderView:
    """What one daemon knows about the leadership at one moment."""

    name: str  # this daemon
    leading: bool
    leader: str | None  # who leads (None: nobody, or unknown)
    message: str  # why this daemon does not act, when it does not
    since: float | None = None  # when the leader took over (wall clock)
    reachable: bool = True  # etcd answered the last round (with a quorum behind it)


class Leadership:
    """Campaign for, hold and give up the leadership of one namespace."""

    def __init__(
        self,
        backend: EtcdBackend,
        name: str,
        *,
        ttl: float = DEFAULT_TTL,
        info: dict[str, Any] | None = None,
        on_change: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        campaign: bool = True,
    ) -> None:
        """``campaign=False``: hold the lease and the member record only, never lead (a
        stand-in, :mod:`gitorch.apply.standin`)."""
        if ttl < 2:
            raise StateError(f"a lease TTL of {ttl:g}s is too short (at least 2s)")
        self.backend = backend
        self.client = backend.client
        self.name = name
        self.ttl = ttl
        self.info = {
            "name": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "startedAt": time.time(),
            **(info or {}),
        }
        self.on_change = on_change
        self.monotonic = monotonic
        self.campaign = campaign
        self.leader_key = backend.full(LEADER_KEY)
        self.member_key = backend.full(f"{MEMBERS_PREFIX}{name}")
        self._lock = threading.Lock()
        self._lease: int | None = None
        self._member_written: tuple[int, bytes] | None = None
        self._fence: Fence | None = None
        self._deadline = 0.0  # monotonic time until which the lease surely holds
        self._leader: str | None = None
        self._since: float | None = None
        self._message = "not campaigned yet"
        self._reachable = False
        self._stop = threading.Event()
        self._wake = threading.Event()  # a changed member record: write it now
        self._thread: threading.Thread | None = None
        self._was_leading = False

    # ----------------------------------------------------------------- public

    @property
    def margin(self) -> float:
        """How long before the lease's earliest expiry the leader stops acting."""
        return max(0.5, self.ttl * 0.2)

    @property
    def leading(self) -> bool:
        """True while this daemon leads and its lease surely holds (see the docstring)."""
        with self._lock:
            return self._fence is not None and self.monotonic() < self._deadline

    def fence(self) -> Fence:
        """The fence of this daemon's writes; NotLeader when it does not lead now."""
        with self._lock:
            if self._fence is not None and self.monotonic() < self._deadline:
                return self._fence
            leader = self._leader if self._leader != self.name else None
        raise NotLeader(
            f"{self.name} does not lead"
            + (f" ({leader} does)" if leader else f": {self._message}"),
            leader=leader,
        )

    def view(self) -> LeaderView:
        leading = self.leading
        with self._lock:
            return LeaderView(
                name=self.name,
                leading=leading,
                leader=self._leader,
                message="" if leading else self._message,
                since=self._since,
                reachable=self._reachable,
            )

    def members(self) -> list[dict[str, Any]]:
        """Every daemon that holds a lease now (its ``members/NAME`` record)."""
        found, _ = self.client.range(self.backend.full(MEMBERS_PREFIX), prefix=True)
        return [load(kv.value) for kv in found]

    def update_info(self, **fields: Any) -> None:
        """Change what this daemon publishes about itself (written at once, by the
        campaign's thread: `gitorch status` read from etcd shows a new error as soon as
        the daemon's own API does)."""
        with self._lock:
            changed = any(self.info.get(k) != v for k, v in fields.items())
            self.info.update(fields)
        if changed:
            self._wake.set()

    def start(self) -> None:
        """Campaign once now (so the daemon knows its role at once), then keep at it."""
        self._claim_name()
        self._round()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Give the leadership up at once (revoke the lease: a standby takes over
        within its next campaign, not after the TTL)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        with self._lock:
            lease, self._lease, self._fence = self._lease, None, None
        if lease is not None:
            try:
                self.client.revoke(lease)
            except StateError as exc:
                log.warning("could not revoke the lease (it expires by itself): %s", exc.message)

    def _claim_name(self) -> None:
        """Refuse a second daemon of this name. A record left by a killed daemon of this
        host (its pid is gone) is let go at once; one of another host expires with its
        lease, which is waited for."""
        deadline = self.monotonic() + self.ttl + 1
        while True:
            found, _ = self.client.range(self.member_key)
            if not found:
                return
            data = load(found[0].value) or {}
            if data.get("host") == socket.gethostname() and not _alive(data.get("pid")):
                self.client.revoke(found[0].lease)
                return
            if self.monotonic() >= deadline:
                raise ConfigError(
                    f"a gitorch daemon named {self.name} already runs (pid {data.get('pid')} "
                    f"on {data.get('host')}): give this one another --name"
                )
            time.sleep(0.5)

    # ----------------------------------------------------------------- the loop

    @property
    def renew_every(self) -> float:
        """How often a leader renews its lease. A renewal may meet etcd without a raft
        leader (a member lost: an election takes one to two election timeouts, longer on
        a loaded host), and then costs a client timeout per member it tries; what is left
        of the deadline after one interval (``ttl - margin - renew_every``: 3.2 s at the
        default TTL) is room for two such timeouts, so losing one member of three never
        costs the leadership."""
        return self.ttl / 6

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                leading = self._fence is not None
                failed = not self._reachable
            # A leader renews often (see renew_every), and at once after a renewal that
            # failed while its deadline still holds: waiting a whole interval more could
            # outlast the deadline. A standby asks often too, so it takes over soon after
            # the leader's lease expires.
            if leading:
                interval = RETRY_AFTER if failed else self.renew_every
            else:
                interval = min(0.5, self.ttl / 6)
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._round()

    def _round(self) -> None:
        try:
            self._keep_lease()
            self._campaign()
            with self._lock:
                self._reachable = True
        except StateError as exc:
            self._trouble(exc.message)
        except Exception as exc:  # a bug must not end the campaign: log, go on
            log.exception("leadership round failed")
            self._trouble(f"internal error: {exc!r}")
        self._notify()

    def _keep_lease(self) -> None:
        sent = self.monotonic()
        if self._lease is None:
            lease = self.client.grant(math.ceil(self.ttl))
            with self._lock:
                self._lease = lease
                self._member_written = None
                self._deadline = sent + self.ttl - self.margin
            return
        remaining = self.client.keepalive(self._lease)
        if remaining <= 0:
            with self._lock:
                lost = self._fence is not None
                self._lease, self._fence = None, None
                self._message = "its lease expired (it was paused or cut off too long)"
            if lost:
                log.warning("leadership lost: the lease expired; campaigning again")
            self._keep_lease()
            return
        with self._lock:
            self._deadline = sent + self.ttl - self.margin

    def _campaign(self) -> None:
        lease = self._lease
        assert lease is not None
        with self._lock:
            member = dump({**self.info, "lease": lease})
            write_member = self._member_written != (lease, member)
        if not self.campaign:
            self._hold_member_record(lease, member, write_member)
            return
        mine = dump({"name": self.name, "lease": lease, "since": time.time()})
        success: list[dict[str, Any]] = [
            {"request_put": {"key": b64(self.leader_key), "value": b64(mine), "lease": lease}}
        ]
        failure: list[dict[str, Any]] = [{"request_range": {"key": b64(self.leader_key)}}]
        if write_member:
            member_put = {
                "request_put": {"key": b64(self.member_key), "value": b64(member), "lease": lease}
            }
            success.append(member_put)
            failure.append(member_put)
        result = self.client.txn(
            [{"key": b64(self.leader_key), "target": "CREATE", "create_revision": 0}],
            success,
            failure,
        )
        with self._lock:
            if write_member:
                self._member_written = (lease, member)
            if result.succeeded:
                self._fence = Fence(self.leader_key, result.revision, self.name)
                self._leader, self._since = self.name, time.time()
                self._message = ""
                return
            holders = result.ranges()[0] if result.ranges() else []
            if not holders:  # deleted between compare and read: next round
                self._fence, self._leader = None, None
                self._message = "no daemon leads (an election is under way)"
                return
            holder = holders[0]
            data = load(holder.value) or {}
            self._leader = str(data.get("name") or "") or None
            self._since = data.get("since")
            if holder.lease == lease:  # ours (held across a quorum loss, or a restart)
                self._fence = Fence(self.leader_key, holder.create_revision, self.name)
                self._message = ""
            else:
                self._fence = None
                self._message = f"{self._leader} leads" if self._leader else "another daemon leads"

    def _hold_member_record(self, lease: int, member: bytes, write: bool) -> None:
        """A member that does not campaign: its record, and who leads (for its view)."""
        put = [{"request_put": {"key": b64(self.member_key), "value": b64(member), "lease": lease}}]
        if write:
            self.client.txn([], put, [])
            with self._lock:
                self._member_written = (lease, member)
        found, _ = self.client.range(self.leader_key)
        data = (load(found[0].value) or {}) if found else {}
        with self._lock:
            self._fence = None
            self._leader = str(data.get("name") or "") or None
            self._since = data.get("since")
            self._message = "does not campaign (a stand-in)"

    def _trouble(self, message: str) -> None:
        """etcd did not answer: keep the leadership only while the deadline holds."""
        with self._lock:
            self._message = message
            self._reachable = False
            if self._fence is not None and self.monotonic() >= self._deadline:
                self._fence = None
                log.warning("not acting: %s", message)

    def _notify(self) -> None:
        leading = self.leading
        if leading == self._was_leading:
            return
        self._was_leading = leading
        view = self.view()
        if leading:
            log.info("leading", extra={"leader": self.name})
        else:
            log.warning("not leading: %s", view.message or f"{view.leader} leads")
        if self.on_change is not None:
            self.on_change(leading)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    return pid == os.getpid() or process_alive(pid)


def let_go_of_member(backend: EtcdBackend, name: str, pid: int) -> bool:
    """Revoke the lease of member ``name`` when its record is this host's process ``pid``
    and that process is gone (a killed daemon: its leadership, if it led, is free at once
    instead of when the lease expires). Whether a lease was revoked."""
    found, _ = backend.client.range(backend.full(f"{MEMBERS_PREFIX}{name}"))
    if not found:
        return False
    data = load(found[0].value) or {}
    if data.get("host") != socket.gethostname() or data.get("pid") != pid or _alive(pid):
        return False
    backend.client.revoke(found[0].lease)
    return True


def _role(member: dict[str, Any], leader: str | None) -> str:
    if member.get("name") == leader:
        return "leader"
    return "stand-in" if member.get(STANDS_IN_FIELD) else "standby"


def read_leadership(backend: EtcdBackend) -> dict[str, Any]:
    """Who leads the namespace and which daemons hold a lease, read in one request
    (``gitorch status`` without a daemon; a daemon's status adds its own view)."""
    leader_rows, member_rows, table_rows = backend.read_many(
        (LEADER_KEY, False), (MEMBERS_PREFIX, True), (TABLE_KEY, False)
    )
    leader = leader_rows[0][1] if leader_rows else None
    name = leader.get("name") if isinstance(leader, dict) else None
    members = [value for _, value in member_rows if isinstance(value, dict)]
    stored = table_rows[0][1] if table_rows else None
    return {
        "leader": name,
        "leaderSince": leader.get("since") if isinstance(leader, dict) else None,
        "members": [
            {
                "name": m.get("name"),
                "role": _role(m, name),
                "standsInFor": m.get(STANDS_IN_FIELD),
                "listen": m.get("listen"),
                "host": m.get("host"),
                "pid": m.get("pid"),
                "startedAt": m.get("startedAt"),
                "revision": m.get("revision"),
                "allowHostPaths": m.get("allowHostPaths") or [],
                # How its host serves the leader's routing table (apply/followers.py).
                "table": table_state(m, name, stored),
                "lastError": (m.get("lastError") or {}).get("message")
                if isinstance(m.get("lastError"), dict)
                else None,
            }
            for m in sorted(members, key=lambda m: str(m.get("name")))
        ],
    }

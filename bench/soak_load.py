"""The soak's load: steady requests through every exposed service, each one recorded.

Three kinds of client threads, each paced to ``rate`` requests a second and going round
the services the soak expects to be served:

* ``keepalive``: GET / on one keep-alive connection per service (a connection the server
  closed while idle is opened again and the request sent again once, as any keep-alive
  client does: that is not a failed request);
* ``fresh``: GET / on a new connection each time;
* ``post``: POST / with a small body on a new connection each time: the proxy may not
  send a POST again after it reached a replica, so a replica stopped with requests in
  flight shows up here.

Which services are expected to answer (:class:`Targets`): a service is *pending* from the
commit that adds it until it has answered 2xx after the daemon moved to that commit (a
refused connection or a 503 meanwhile is not a failure), *up* from then on (every
failure is judged), and *leaving* from the commit that removes it (a refused connection
is then the expected end, anything else is judged; a service removed before it was ever
up is judged as while it was pending). A 418 comes from the soak's own
foreign process holding a port (the port-taken fault), never from gitorch.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

PENDING = "pending"
UP = "up"
LEAVING = "leaving"

#: Seconds a request may take before the client gives up (longer than every stop fault).
REQUEST_TIMEOUT = 45.0
#: Width of the buckets the per-version counts are kept in.
BUCKET = 5.0


@dataclass(frozen=True)
class Failure:
    """One request that did not get a 2xx answer."""

    service: str
    client: str  # keepalive | fresh | post
    start: float  # monotonic
    end: float
    error: str  # "HTTP 500", "refused", "reset", "timeout", ...
    status: int | None = None
    version: str | None = None  # X-App-Version of the answer, when a replica answered
    body: str = ""
    phase: str = UP


@dataclass
class Target:
    service: str
    port: int
    phase: str
    since_index: int  # the commit (index) that added it: up only once the daemon has it
    removed_at: float | None = None
    was_up: bool = False  # leaving: it had been up (served) before its removal


class Targets:
    """The services the load goes to, and what is expected of each (module docstring)."""

    def __init__(self, applied_index: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._targets: dict[str, Target] = {}
        self._applied_index = applied_index

    def expect(self, service: str, port: int, index: int, up: bool = False) -> None:
        with self._lock:
            current = self._targets.get(service)
            if current is not None and current.phase == UP and current.port == port:
                return
            self._targets[service] = Target(service, port, UP if up else PENDING, index)

    def leave(self, service: str) -> None:
        with self._lock:
            current = self._targets.get(service)
            if current is not None and current.phase != LEAVING:
                current.was_up = current.phase == UP
                current.phase = LEAVING
                current.removed_at = time.monotonic()

    def drop(self, service: str) -> None:
        with self._lock:
            self._targets.pop(service, None)

    def snapshot(self) -> list[Target]:
        with self._lock:
            return [Target(**vars(t)) for t in self._targets.values()]

    def phase(self, service: str) -> str | None:
        with self._lock:
            target = self._targets.get(service)
            return target.phase if target else None

    def was_up(self, service: str) -> bool:
        with self._lock:
            target = self._targets.get(service)
            return target is not None and target.was_up

    def answered(self, service: str) -> None:
        """A 2xx came: a pending service whose commit the daemon has is up."""
        with self._lock:
            target = self._targets.get(service)
            if target is None or target.phase != PENDING:
                return
        if self._applied_index() >= target.since_index:
            with self._lock:
                if target.phase == PENDING:
                    target.phase = UP

    def refused_long(self, service: str, seconds: float) -> None:
        """A leaving service refused for ``seconds``: it is gone, stop sending to it."""
        with self._lock:
            target = self._targets.get(service)
            if (
                target is not None
                and target.phase == LEAVING
                and target.removed_at is not None
                and time.monotonic() - target.removed_at > seconds
            ):
                self._targets.pop(service, None)


@dataclass
class Tally:
    """Counts, kept small: totals, per (service, version, bucket), and every failure."""

    ok: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # pending / leaving refusals
    versions: dict[tuple[str, int], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    slowest: float = 0.0


class Load:
    """The client threads (module docstring) and what they recorded."""

    def __init__(self, targets: Targets, rate: float, threads: dict[str, int]) -> None:
        self.targets = targets
        self.rate = rate
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(kind, n), name=f"load-{kind}-{n}", daemon=True)
            for kind, count in threads.items()
            for n in range(count)
        ]
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(REQUEST_TIMEOUT + 5)

    def bucket_of(self, monotonic: float) -> int:
        """The per-version count bucket a moment falls in."""
        return int((monotonic - self.started) // BUCKET)

    @property
    def total(self) -> int:
        with self._lock:
            return self.tally.ok + len(self.tally.failures) + sum(self.tally.ignored.values())

    def failures_since(self, index: int) -> list[Failure]:
        with self._lock:
            return self.tally.failures[index:]

    # -- the clients ---------------------------------------------------------------------

    def _run(self, kind: str, n: int) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        turn = n
        interval = 1.0 / self.rate
        next_at = time.monotonic() + interval * (n % 7) / 7
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            targets = [t for t in self.targets.snapshot()]
            if not targets:
                continue
            targets.sort(key=lambda t: t.service)
            target = targets[turn % len(targets)]
            turn += 1
            if kind == "keepalive":
                self._keepalive(target, conns)
            else:
                self._fresh(target, kind)
        for conn in conns.values():
            conn.close()

    def _keepalive(self, target: Target, conns: dict[int, http.client.HTTPConnection]) -> None:
        conn = conns.get(target.port)
        reused = conn is not None
        if conn is None:
            conn = conns[target.port] = _connection(target.port)
        start = time.monotonic()
        try:
            status, version, body = _exchange(conn, "GET")
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            conn.close()
            conns[target.port] = conn = _connection(target.port)
            if not reused:
                self._record(target, "keepalive", start, error=_name(exc))
                return
            try:  # the server closed the idle connection: once more on a new one
                status, version, body = _exchange(conn, "GET")
            except (OSError, http.client.HTTPException) as again:
                conn.close()
                conns.pop(target.port, None)
                self._record(target, "keepalive", start, error=_name(again))
                return
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conns.pop(target.port, None)
            self._record(target, "keepalive", start, error=_name(exc))
            return
        self._record(target, "keepalive", start, status=status, version=version, body=body)

    def _fresh(self, target: Target, kind: str) -> None:
        conn = _connection(target.port)
        start = time.monotonic()
        try:
            status, version, body = _exchange(conn, "POST" if kind == "post" else "GET")
        except (OSError, http.client.HTTPException) as exc:
            self._record(target, kind, start, error=_name(exc))
            return
        finally:
            conn.close()
        self._record(target, kind, start, status=status, version=version, body=body)

    def _record(
        self,
        target: Target,
        client: str,
        start: float,
        *,
        status: int | None = None,
        version: str | None = None,
        body: str = "",
        error: str | None = None,
    ) -> None:
        end = time.monotonic()
        bucket = self.bucket_of(end)
        phase = self.targets.phase(target.service) or target.phase
        never_up = phase == LEAVING and not self.targets.was_up(target.service)
        if status is not None and 200 <= status < 300:
            with self._lock:
                self.tally.ok += 1
                self.tally.by_client[client] += 1
                self.tally.versions[(target.service, bucket)][version or "?"] += 1
                self.tally.slowest = max(self.tally.slowest, end - start)
            self.targets.answered(target.service)
            return
        what = error or f"HTTP {status}"
        # Not served yet: refused, no backend, the foreign holder of its port (418), or
        # that holder ending with the connection open (the port-taken fault's end).
        not_served = error in ("refused", "reset", "empty reply") or status in (503, 418)
        if phase == PENDING and not_served:
            with self._lock:
                self.tally.ignored["pending"] += 1
            return
        gone = error == "refused" or status == 418
        if phase == LEAVING and (not_served if never_up else gone):
            with self._lock:
                self.tally.ignored["leaving"] += 1
            self.targets.refused_long(target.service, 20.0)
            return
        failure = Failure(
            target.service, client, start, end, what, status, version, body[:160], phase
        )
        with self._lock:
            self.tally.failures.append(failure)
            self.tally.by_client[client] += 1
            if status is not None:
                self.tally.versions[(target.service, bucket)][version or "?"] += 1


def _connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)


def _exchange(conn: http.client.HTTPConnection, method: str) -> tuple[int, str | None, str]:
    if method == "POST":
        conn.request(
            "POST", "/", body=b'{"order": 1}', headers={"Content-Type": "application/json"}
        )
    else:
        conn.request("GET", "/")
    resp = conn.getresponse()
    body = resp.read().decode("utf-8", "replace")
    return resp.status, resp.getheader("X-App-Version"), body


def _name(exc: BaseException) -> str:
    """A failure in words the excuse rules use."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "empty reply"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, http.client.IncompleteRead):
        # The head came, the connection ended inside the body: the process writing it
        # died (a proxy SIGKILLed between its writes), as much a connection failure as
        # a reset.
        return "cut short"
    return f"{type(exc).__name__}: {exc}"

"""Canary stickiness (``strategy.canary.stickySessions``) end to end, on the built-in data
plane and on HAProxy: the daemon as a subprocess, a real Git repo, process replicas.

What must hold:

* sticky on, canary paused at setWeight 20: about 20% of fresh clients land on the new
  version, and a client that keeps its cookies gets one version for all its requests;
* `gitorch abort` (weight 0): the sticky clients of the new version move to the stable
  one, and no request fails;
* sticky off: a client that keeps its cookies sees both versions (and gets no cookie);
* `gitorch plan` shows a change of the field like any other field.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from progressive_helpers import (
    MANIFEST,
    RESYNC,
    DaemonProc,
    Watcher,
    World,
    action,
    commit_next,
    deploy_first,
    gitorch,
    process_progressive,
    rolled_back_to,
    wait_for,
)

REPLICAS = 2
WEIGHT = 20
FRESH_CLIENTS = 100
STICKY_REQUESTS = 60  # each kept client's requests while the canary is paused (>= 50)
PER_VERSION = 3  # kept clients per version
TOLERANCE = 8.0  # points: fresh clients are few, but the split is round robin, not random
COOKIE = "gitorch_v_web"


def canary(sticky: bool | None) -> str:
    """A canary that stops at WEIGHT% until promoted; ``sticky`` None leaves the field out."""
    line = "" if sticky is None else f"      stickySessions: {str(sticky).lower()}\n"
    return f"""\
  strategy:
    type: Canary
    progressDeadlineSeconds: 60
    canary:
{line}      steps:
        - setWeight: {WEIGHT}
        - pause: {{}}
"""


def version_of(body: str) -> str:
    for word in body.split():
        if word.startswith("version="):
            return word.split("=", 1)[1]
    return "?"


@dataclass
class Client:
    """A browser-like client: a cookie jar it sends back on every request, and a keep-alive
    connection it opens anew every ``reconnect`` requests (stickiness is the cookie's doing,
    not the connection's)."""

    port: int
    reconnect: int = 10
    jar: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, version)
    failures: list[str] = field(default_factory=list)
    _conn: http.client.HTTPConnection | None = None
    _used: int = 0

    def get(self) -> str | None:
        """One request; the version that answered (None when it failed)."""
        if self._conn is None or self._used >= self.reconnect:
            self.close()
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._used = 0
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items())}
        try:
            self._conn.request("GET", "/", headers=headers if self.jar else {})
            resp = self._conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            # A reused connection the server closed while idle is retried once, as browsers do.
            self.close()
            if self._used > 0:
                return self.get()
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return None
        self._used += 1
        for header in resp.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.jar[name] = morsel.value
        if not 200 <= resp.status < 300:
            self.failures.append(f"HTTP {resp.status}: {body.strip()[:120]}")
            return None
        version = version_of(body)
        self.answers.append((time.monotonic(), version))
        return version

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def versions(self, since: float = 0.0) -> list[str]:
        return [v for at, v in self.answers if at >= since]


@dataclass
class Clients:
    """Kept clients, each sending requests without pause in its own thread."""

    clients: list[Client]
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Clients:
        for client in self.clients:
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        for client in self.clients:
            client.close()

    def _run(self, client: Client) -> None:
        while not self._stop.is_set():
            if client.get() is None:
                time.sleep(0.01)  # a closed endpoint must not spin a core

    def wait_each(self, count: int, since: float, timeout: float) -> None:
        """Until every client has ``count`` answers after ``since``."""
        wait_for(
            f"{count} answers per client",
            lambda: all(len(c.versions(since)) >= count for c in self.clients),
            timeout,
            interval=0.02,
        )


def paused_canary(world: World, plane: str, sticky: bool | None) -> tuple[DaemonProc, str, str]:
    """Version 1 healthy, then version 2 committed and paused at WEIGHT% (plus a resync, so
    the data plane serves that weight). Returns the daemon and both commits."""

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=canary(sticky), replicas=REPLICAS
        )

    daemon, good = deploy_first(world, plane, make("1"))
    with Watcher(daemon, "web") as watch:
        new = commit_next(world, make("2"), "2")
        watch.until(
            f"the pause at {WEIGHT}%",
            lambda s: s.phase == "Paused" and s.weight == WEIGHT,
            30,
        )
    # The routing table is published at the end of the pass that stored the weight.
    time.sleep(RESYNC + 0.2)
    return daemon, good, new


def test_sticky_clients_keep_their_version_and_return_on_abort(world: World, plane: str) -> None:
    daemon, good, _ = paused_canary(world, plane, sticky=True)

    # Fresh clients (no cookie), one request each: the weight decides.
    fresh = [Client(world.port) for _ in range(FRESH_CLIENTS)]
    first = Counter(client.get() for client in fresh)
    for client in fresh:
        client.close()
    share = 100.0 * first["2"] / FRESH_CLIENTS
    print(f"{plane}: {share:.0f}% of {FRESH_CLIENTS} fresh clients on version 2 {dict(first)}")
    assert abs(share - WEIGHT) <= TOLERANCE, dict(first)
    assert all(COOKIE in c.jar for c in fresh if c.answers), "a fresh client got no cookie"

    # Some of them stay: their cookies came with the first answer.
    kept = [c for c in fresh if c.versions() == ["2"]][:PER_VERSION]
    kept += [c for c in fresh if c.versions() == ["1"]][:PER_VERSION]
    assert len(kept) == 2 * PER_VERSION, dict(first)
    started = time.monotonic()
    with Clients(kept) as clients, Watcher(daemon, "web") as watch:
        clients.wait_each(STICKY_REQUESTS, started, 30)
        paused = {id(c): Counter(c.versions()) for c in kept}
        for client in kept:
            assert len(paused[id(client)]) == 1, (
                f"a sticky client of version {client.versions()[0]} saw {paused[id(client)]}"
            )
        asked = time.monotonic()
        action(daemon, "abort")
        zero = watch.until("weight 0", lambda s: s.weight == 0 or s.phase == "RolledBack", 10)
        wait_for(
            "the rollback", rolled_back_to(daemon, good, REPLICAS), 30, describe=watch.describe
        )
        # From one resync after weight 0 was stored, every client is on version 1.
        settled = max(zero.at, asked) + RESYNC
        clients.wait_each(30, settled, 30)
    for client in kept:
        after = client.versions(settled)
        assert set(after) == {"1"}, f"after the abort a client saw {Counter(after)}"
        # One move at most, from 2 to 1, never back.
        seen = client.versions()
        moves = [(a, b) for a, b in zip(seen, seen[1:], strict=False) if a != b]
        assert moves in ([], [("2", "1")]), f"a client's versions moved {moves}"
    movers = [c for c in kept if c.versions()[0] == "2"]
    assert movers and all(c.versions()[-1] == "1" for c in movers)
    failures = [f for c in kept for f in c.failures]
    total = sum(len(c.answers) + len(c.failures) for c in kept)
    print(f"{plane}: {len(failures)} failed of {total} kept-client requests")
    assert failures == [], failures[:5]


def test_without_stickiness_a_client_sees_both_then_turned_on_mid_canary(
    world: World, plane: str
) -> None:
    daemon, _, _ = paused_canary(world, plane, sticky=None)
    client = Client(world.port)
    try:
        seen = Counter(client.get() for _ in range(STICKY_REQUESTS))
    finally:
        client.close()
    print(f"{plane}: one client without stickiness saw {dict(seen)}")
    assert client.failures == [], client.failures[:5]
    assert seen["1"] > 0 and seen["2"] > 0, dict(seen)
    assert COOKIE not in client.jar, client.jar

    # `gitorch plan` (uncommitted edit) shows turning it on as a field change.
    manifest = world.repo / MANIFEST
    committed = manifest.read_text(encoding="utf-8")
    manifest.write_text(
        committed.replace("    canary:\n", "    canary:\n      stickySessions: true\n", 1),
        encoding="utf-8",
    )
    args = ("plan", "--repo", str(world.repo), "--worktree", "--state", str(daemon.state))
    as_json = gitorch(*args, "--format", "json", cwd=world.root)
    as_text = gitorch(*args, cwd=world.root)
    manifest.write_text(committed, encoding="utf-8")
    assert as_json.code == 2, as_json.stdout + as_json.stderr
    (change,) = [c for c in as_json.json()["changes"] if c["name"] == "web"]
    assert change["action"] == "update", change
    # Only the field changed: the replicas run the same thing, so nothing else differs.
    # Off is the canonical form's silence (a Canary written before the field existed keeps
    # its digest), so turning it on adds the field.
    assert change["diff"] == [
        {"op": "add", "path": "spec.strategy.canary.stickySessions", "after": True}
    ], change["diff"]
    line = [ln for ln in as_text.stdout.splitlines() if "stickySessions" in ln]
    print(f"{plane}: plan says {line}")
    assert line and "true" in line[0], as_text.stdout

    # Committed during the pause, it re-routes without restarting the canary.
    sticky = committed.replace("    canary:\n", "    canary:\n      stickySessions: true\n", 1)
    with Watcher(daemon, "web") as watch:
        commit_next(world, sticky, "2, sticky")
        client = Client(world.port)
        try:
            wait_for("a sticky cookie", lambda: client.get() and COOKIE in client.jar, 10)
            since = time.monotonic()
            for _ in range(STICKY_REQUESTS):
                client.get()
        finally:
            client.close()
    kept = Counter(client.versions(since))
    print(f"{plane}: turned on mid-canary, the client then saw {dict(kept)}")
    assert client.failures == [], client.failures[:5]
    assert len(kept) == 1 and sum(kept.values()) == STICKY_REQUESTS, dict(kept)
    assert watch.seen and all(s.phase == "Paused" and s.weight == WEIGHT for s in watch.seen), (
        watch.describe()
    )

"""What a service's replicas wrote, as ``gitorch logs --format json``, the API
(``GET /api/v1/services/NAME/logs``) and the dashboard show it: the live replicas' output
read from their runtimes, what the drivers kept of removed ones, and the new lines as
they come (:class:`LogFollower`: ``gitorch logs --follow``, locally or through the API)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from gitorch.errors import GitorchError, NothingToShow, RuntimeDriverError
from gitorch.live.model import LiveNode, LiveReplica, LiveState
from gitorch.runtime.base import RetainedLog, Runtime


def live_replicas(live: LiveState, service: str, only: str | None) -> list[LiveReplica]:
    """The service's replicas that exist now (optionally the one ``only`` names: its
    replica name, its name or its id), by name."""
    found = live.services.get(service)
    replicas = list(found.replicas) if found is not None else []
    if only is not None:
        replicas = [r for r in replicas if only in (r.replica, r.name, r.id)]
    return sorted(replicas, key=lambda r: (r.replica, r.name))


def nothing_live(live: LiveState, service: str, only: str | None) -> NothingToShow:
    """Why there is no live output to show, with the nodes that did not answer."""
    what = f"{only} of {service}" if only else f"of {service}"
    unknown: Iterable[LiveNode] = [n for n in live.nodes.values() if not n.ready]
    detail = tuple(f"node {n.name} did not answer: {n.message}" for n in unknown)
    if service not in live.services:
        known = ", ".join(sorted(live.services)) or "none"
        return NothingToShow(f"no service {service} (services: {known})", detail=detail)
    return NothingToShow(
        f"no replica {what} exists now (gitorch logs {service} --previous shows "
        "the last dead ones)",
        detail=detail,
    )


def live_logs(
    live: LiveState,
    runtimes: Mapping[str, Runtime],
    service: str,
    only: str | None,
    tail: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each live replica's last ``tail`` lines (``{"replica", "name", "node", "state",
    "output"}``), and a warning for each replica whose runtime could not give them.
    Raises :class:`NothingToShow` when no replica exists now."""
    replicas = live_replicas(live, service, only)
    if not replicas:
        raise nothing_live(live, service, only)
    documents, warnings = [], []
    for replica in replicas:
        runtime = runtimes.get(replica.node)
        try:
            text = runtime.logs(replica.id, tail) if runtime is not None else ""
        except RuntimeDriverError as exc:
            warnings.append(f"{replica.replica}: {exc.message}")
            continue
        documents.append(
            {
                "replica": replica.replica,
                "name": replica.name,
                "node": replica.node,
                "state": replica.state,
                "output": text,
            }
        )
    return documents, warnings


def retained(
    runtimes: Iterable[Runtime], cluster: str, service: str, only: str | None = None
) -> list[RetainedLog]:
    """Every answering node's kept output of ``service`` (optionally of the replica
    ``only`` names), newest removal first."""
    kept: list[RetainedLog] = []
    for runtime in runtimes:
        try:
            kept.extend(runtime.retained_logs(cluster, service))
        except GitorchError:
            continue  # a node that does not answer keeps its logs for later
    if only is not None:
        kept = [k for k in kept if only in (k.replica, k.name, k.instance_id)]
    return sorted(kept, key=lambda k: k.removed_at, reverse=True)


def previous_logs(
    runtimes: Iterable[Runtime], cluster: str, service: str, only: str | None, tail: int
) -> list[dict[str, Any]]:
    """:func:`retained_json` of every kept dead replica of ``service`` (or of the one
    ``only`` names), newest first. Raises :class:`NothingToShow` when none is kept."""
    kept = retained(runtimes, cluster, service, only)
    if not kept:
        what = f"replica {only} of {service}" if only else service
        raise NothingToShow(f"no removed replica of {what} has left output here")
    return [retained_json(k, tail) for k in kept]


def retained_json(kept: RetainedLog, tail: int) -> dict[str, Any]:
    """One removed replica: where it ran, how and when it ended, its last ``tail`` lines."""
    lines = kept.output.splitlines()
    last = lines[-tail:] if tail > 0 else []
    return {
        "replica": kept.replica,
        "name": kept.name,
        "service": kept.service,
        "node": kept.node,
        "id": kept.instance_id,
        "revision": kept.revision,
        "exitCode": kept.exit_code,
        "exitReason": kept.exit_reason,
        "startedAt": _iso(kept.started_at),
        "finishedAt": _iso(kept.finished_at),
        "removedAt": _iso(kept.removed_at),
        "truncated": kept.truncated,
        "output": "".join(line + "\n" for line in last),
    }


#: ``--tail all``: more lines than any log holds.
ALL_LINES = 10**9

#: How often a follower looks for replicas that started since.
DISCOVER_SECONDS = 2.0

#: Lines waiting for a slow reader before the replicas' readers wait for it.
_BACKLOG = 10_000

#: What a follower reads to find the replicas: the live state and the nodes' runtimes.
LiveLook = Callable[[], tuple[LiveState, Mapping[str, Runtime]]]


class LogFollower:
    """Every live replica's new lines of one service (or of the replica ``only``
    names), and those of replicas that start later, as events:
    ``{"follow": REPLICA}`` when a replica's output starts to be followed, then
    ``{"replica": REPLICA, "line": TEXT}`` for each line (its last ``tail`` lines first;
    all of a later replica's); ``{"replica": REPLICA, "line": "(gitorch: ...)"}`` when its
    runtime stops answering. Each event also names the commit the replica runs
    (``"revision"``, when known): a canary's slot has a stable and a new replica of one
    name.

    ``look`` is called at once (:class:`NothingToShow` when nothing of the service runs)
    and every ``discover_every`` seconds after. One thread per followed replica reads its
    runtime; :meth:`close` stops them all within half a second, quiet replicas included
    (``Runtime.follow_logs``'s ``stop``).
    """

    def __init__(
        self,
        look: LiveLook,
        service: str,
        only: str | None,
        tail: int,
        *,
        discover_every: float = DISCOVER_SECONDS,
    ) -> None:
        self._look = look
        self.service, self.only, self.tail = service, only, tail
        self._discover_every = discover_every
        self._stop = threading.Event()
        self._events: queue.Queue[dict[str, str]] = queue.Queue(maxsize=_BACKLOG)
        self.followed: list[str] = []
        self._ids: set[str] = set()
        self._next_look = 0.0
        live, runtimes = look()
        if not live_replicas(live, service, only):
            raise nothing_live(live, service, only)
        self._discover(live, runtimes)

    def events(self, quiet: float = 15.0) -> Iterator[dict[str, str] | None]:
        """The events as they come, until :meth:`close`; ``None`` after ``quiet``
        seconds without one (a stream's keep-alive, and a chance to notice a reader that
        left)."""
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= self._next_look:
                try:
                    self._discover(*self._look())
                except GitorchError:
                    self._next_look = now + self._discover_every  # looked again later
            wait = max(0.05, min(self._next_look, last + quiet) - time.monotonic())
            try:
                event = self._events.get(timeout=wait)
            except queue.Empty:
                if time.monotonic() - last >= quiet:
                    last = time.monotonic()
                    yield None
                continue
            last = time.monotonic()
            yield event

    def close(self) -> None:
        """Stop following (every replica's reader ends within half a second)."""
        self._stop.set()

    def _discover(self, live: LiveState, runtimes: Mapping[str, Runtime]) -> None:
        # The first replicas show their last lines; later ones all they wrote.
        tail = ALL_LINES if self.followed else self.tail
        fresh: list[tuple[Runtime, LiveReplica]] = []
        for replica in live_replicas(live, self.service, self.only):
            runtime = runtimes.get(replica.node)
            if replica.id in self._ids or replica.state != "running" or runtime is None:
                continue
            self._ids.add(replica.id)
            self.followed.append(replica.replica)
            self._put(_with_revision({"follow": replica.replica}, replica))
            fresh.append((runtime, replica))
        # Every follow event before any line: a reader prefixes lines once it follows
        # more than one replica, the first replica's last lines included.
        for runtime, replica in fresh:
            threading.Thread(
                target=self._read,
                args=(runtime, replica, tail),
                name=f"gitorch-logs-{replica.replica}",
                daemon=True,
            ).start()
        self._next_look = time.monotonic() + self._discover_every

    def _read(self, runtime: Runtime, replica: LiveReplica, tail: int) -> None:
        try:
            for text in runtime.follow_logs(replica.id, tail, self._stop):
                if not self._put(
                    _with_revision({"replica": replica.replica, "line": text}, replica)
                ):
                    return
        except RuntimeDriverError as exc:
            said = {"replica": replica.replica, "line": f"(gitorch: {exc.message})"}
            self._put(_with_revision(said, replica))

    def _put(self, event: dict[str, str]) -> bool:
        """Queue ``event``, waiting while a slow reader catches up; False once closed."""
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False


def _with_revision(event: dict[str, str], replica: LiveReplica) -> dict[str, str]:
    """``event`` with the commit ``replica`` runs: during a canary a slot's name is
    shared by its stable and its new replica, and the commit tells their lines apart."""
    return {**event, "revision": replica.revision} if replica.revision else event


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat()

"""The daemon's HTTP API: health, status, history, plan, Prometheus metrics, webhooks.

:class:`~gitorch.api.server.ApiServer` serves a :class:`DaemonHandle`: the daemon's side
of the contract, a small object the reconcile loop implements. The HTTP layer only
translates; everything it shows comes from the handle.

Routes (JSON unless noted; errors are ``{"error": "..."}``)::

    GET  /healthz                   200 {"ok": true} | 503 {"ok": false, "reason": ...}
    GET  /api/v1/status             the `gitorch status --format json` document
    GET  /api/v1/history            [?service=NAME&limit=N] the `gitorch history` list
                                    [&scaling=1] its scaling decisions instead
    GET  /api/v1/plan               [?ref=REF][&format=json|markdown|text] the plan of
                                    `gitorch plan --format ...` (headers Gitorch-Plan-Changes,
                                    Gitorch-Plan-Digest)
    GET  /api/v1/nodes              the `gitorch nodes --format json` document
    GET  /api/v1/services/NAME/logs [?tail=N&replica=R&previous=1] what its replicas wrote
                                    [&follow=1] then their new lines as they come
                                    (application/x-ndjson, one event a line)
    POST /api/v1/nodes/NAME/drain|uncordon      move replicas off a node / take it back
    POST /api/v1/volumes/NAME/reset             make a missing volume anew, empty
    GET  /api/v1/audit              [?service=&kind=&since=&limit=] audit entries
    GET  /api/v1/audit/chain        the hash chain, for `gitorch audit --verify --server`
    GET  /metrics                   Prometheus text exposition format 0.0.4
    POST /api/v1/webhook            GitHub / Gitea / Forgejo push (HMAC-SHA256 signed)
    POST /api/v1/reconcile          ask for a reconcile now
    POST /api/v1/services/NAME/promote|abort   move a paused rollout on / abort it

With ``--api-token-file`` every route but ``/healthz`` and the webhook needs
``Authorization: Bearer TOKEN`` (read role for GET, write role for POST): see
:mod:`gitorch.api.auth` and docs/cli-api.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from gitorch.api.metrics import Metrics

if TYPE_CHECKING:
    from gitorch.diff import Plan
    from gitorch.state.audit_chain import ChainEntry


class LogStream(Protocol):
    """A service's followed output (``gitorch.readmodel.logs.LogFollower``)."""

    def events(self, quiet: float = 15.0) -> Iterator[dict[str, str] | None]:
        """``{"follow": REPLICA}`` and ``{"replica": REPLICA, "line": TEXT}`` events (each
        with ``"revision"``, the commit the replica runs, when known) as they come,
        ``None`` after ``quiet`` seconds without one; until :meth:`close`."""
        ...

    def close(self) -> None:
        """Stop following (the readers of the replicas' output end)."""
        ...


class DaemonHandle(Protocol):
    """What the API asks of the running daemon.

    Every method may be called from several HTTP threads at once: implementations must be
    thread-safe (read snapshots, never hold the reconcile lock while answering).
    """

    @property
    def metrics(self) -> Metrics:
        """The daemon's metrics, rendered by ``GET /metrics``."""
        ...

    def status(self) -> dict[str, Any]:
        """The ``gitorch status --format json`` document."""
        ...

    def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Applied revisions, newest first, in the ``gitorch history --format json`` shape."""
        ...

    def scaling(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        """Scaling decisions (autoscaler, vertical Auto, node pools), newest first, in the
        ``gitorch history --scaling --format json`` shape."""
        ...

    def plan(self, ref: str | None) -> Plan:
        """The plan of ``ref`` (default: the tracked ref) against the live state: what
        ``gitorch plan`` shows, rendered by the API as JSON, markdown or text.

        May raise a :class:`~gitorch.errors.GitorchError` (unknown ref, invalid manifests):
        the API answers 400/422 with its message.
        """
        ...

    def audit_events(
        self, service: str | None, kind: str | None, since: float | None, limit: int | None
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` audit entries (None: all) of ``service`` and ``kind`` from
        ``since`` on, newest first, each as ``AuditEvent.to_json()``."""
        ...

    def audit_chain(self) -> tuple[list[ChainEntry], int | None]:
        """Every audit entry as the hash chain reads it, and the highest id handed out
        (``StateStore.audit_chain``)."""
        ...

    def service_logs(
        self, service: str, replica: str | None, tail: int, previous: bool
    ) -> dict[str, Any]:
        """``{"replicas": [...], "warnings": [...]}``: the last ``tail`` lines of each live
        replica of ``service`` (or of the one ``replica`` names); with ``previous``,
        ``{"previous": [...]}``: what is kept of its dead ones, newest first. Raises
        :class:`~gitorch.errors.NothingToShow` when there is nothing to show."""
        ...

    def follow_logs(self, service: str, replica: str | None, tail: int) -> LogStream:
        """The new lines of ``service``'s live replicas (or the one ``replica`` names),
        after their last ``tail``; picks up replicas that start later. Raises
        :class:`~gitorch.errors.NothingToShow` when none runs now."""
        ...

    def drain(self, node: str, draining: bool, actor: str | None) -> tuple[bool, str]:
        """Cordon ``node`` and move its replicas off (``draining``), or make it schedulable
        again: (done, message); not done when no such node is known. ``actor``: the API
        token's name, recorded in the audit log."""
        ...

    def reset_volume(self, name: str, actor: str | None) -> str:
        """Forget the missing volume ``name`` so the next pass makes it anew, empty (as
        ``gitorch volumes --reset``), recorded with ``actor`` (the API token's name); the
        message to answer. :class:`~gitorch.errors.NothingToShow` for no such volume,
        :class:`~gitorch.errors.NotNow` for one that is not missing."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The rows of ``gitorch nodes --format json``, as the daemon last observed them."""
        ...

    def trigger(self, reason: str, actor: str | None = None) -> None:
        """Ask for a reconcile as soon as possible; returns at once (never reconciles inline).

        ``actor``: the name of the API token that asked (None: not an authenticated API
        request); an authenticated request is recorded in the audit log with it."""
        ...

    def request_action(
        self, service: str, action: str, actor: str | None = None
    ) -> tuple[bool, str]:
        """``promote`` or ``abort`` the rollout of ``service``: (accepted, message). Not
        accepted (409) when the service has no rollout in progress. ``actor`` (the API
        token's name) is recorded with the request in the audit log."""
        ...

    def healthy(self) -> tuple[bool, str]:
        """(True, "") when the daemon works; (False, why) otherwise (``/healthz`` 503)."""
        ...


__all__ = ["DaemonHandle", "LogStream", "Metrics"]

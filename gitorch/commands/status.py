"""``gitorch status [SERVICE]``: services, replicas, versions, rollout phase, nodes, last error."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from rich.markup import escape
from rich.table import Table

from gitorch.commands.cluster import ClusterView, add_runtime_option, open_view
from gitorch.commands.common import add_format_option, add_state_option, print_json, short, stdout
from gitorch.commands.remote import add_token_option, client_token
from gitorch.decide.backoff import remaining
from gitorch.decide.service import SERVICE_SLOT, slot_of
from gitorch.errors import GitorchError
from gitorch.live.model import LiveReplica, LiveService
from gitorch.live.observe import assess_readiness
from gitorch.state import BackoffRecord, TrafficSnapshot, lock_holder

EXAMPLE = """example:
  gitorch status
  gitorch status web --format json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="services, replicas, versions, rollout phase, nodes, last error",
        description="Show what runs now: every service's replicas (desired, ready, updated), the "
        "revision live, the rollout phase, and each replica's node and address. Replicas are "
        "observed from the runtimes and probed once with their readiness probe. Exit 0.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", nargs="?", help="show one service in detail")
    add_state_option(parser)
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) instead of reading --state",
    )
    add_token_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def service_json(
    service: LiveService,
    backoff: Mapping[int, BackoffRecord] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """One service of the status document. ``backoff``: the crash-loop state per slot
    (gitorch replaces a crashed replica, so the runtime's own count stays 0); slot 0 is a
    failure of the service itself (a port it cannot bind), which makes it Degraded."""
    backoff = backoff or {}
    now = time.time() if now is None else now
    slots = {slot: b for slot, b in backoff.items() if slot != SERVICE_SLOT}
    failure = backoff.get(SERVICE_SLOT)
    applied = service.applied
    spec = applied.canonical.get("spec", {}) if applied else {}
    desired = spec.get("replicas", 0) if applied else 0
    expose = spec.get("expose")
    return {
        "name": service.name,
        "revision": applied.revision if applied else None,
        "replicas": {
            "desired": desired,
            "running": len(service.running),
            "ready": sum(1 for r in service.replicas if r.ready),
            "updated": sum(
                1
                for r in service.running
                if applied is not None and r.template_digest == applied.digest
            ),
        },
        "rollout": {
            # A failure of the service itself (its port) outranks the rollout's phase.
            "phase": "Degraded"
            if failure is not None
            else (applied.phase if applied else "Unmanaged"),
            "step": applied.step if applied else None,
            "weight": applied.weight if applied else 100,
            "lastError": failure.reason
            if failure is not None
            else (applied.last_error if applied else None),
            "message": applied.message if applied else "",
        },
        "failure": _failure_json(failure, now) if failure is not None else None,
        "endpoint": {"port": expose["port"], "protocol": expose["protocol"]} if expose else None,
        # Crash-loop restarts of all slots (a slot in back-off may have no replica at all).
        "restarts": sum(b.restarts for b in slots.values()),
        "backoff": [
            {
                "replica": f"{service.name}-{slot}",
                "restarts": b.restarts,
                "lastCause": b.reason or None,
                "exitCode": b.last_exit_code,
                "retryInSeconds": round(remaining(b, now), 1),
            }
            for slot, b in sorted(slots.items())
        ],
        "instances": [
            {
                "id": r.id,
                "name": r.name,
                "replica": r.replica,
                "node": r.node,
                "revision": r.revision,
                "state": r.state,
                "ready": r.ready,
                "address": r.address,
                "startedAt": r.started_at,
                "restarts": max(r.restarts, _restarts_of(r, slots)),
                "exitCode": r.exit_code,
                "exitReason": r.exit_reason,
            }
            for r in service.replicas
        ],
    }


def _restarts_of(replica: LiveReplica, slots: Mapping[int, BackoffRecord]) -> int:
    """Restarts counted on ``replica``'s slot for the template it runs (a failed new
    version's deaths are not the old version's restarts)."""
    known = slots.get(slot_of(replica.replica))
    if known is None or known.template not in (None, replica.template_digest):
        return 0
    return known.restarts


def _failure_json(failure: BackoffRecord, now: float) -> dict[str, Any]:
    return {
        "message": failure.reason,
        "failures": failure.restarts,
        "retryInSeconds": round(remaining(failure, now), 1),
    }


def traffic_json(name: str, snapshots: Mapping[str, TrafficSnapshot], now: float) -> dict[str, Any]:
    """The ``traffic`` fields of one service: its endpoint's per-version figures (None when
    no daemon stored any) and, during a blue-green rollout, its preview listener's."""
    main = snapshots.get(name)
    preview = snapshots.get(f"{name}.preview")
    return {
        "traffic": main.to_json(now) if main is not None else None,
        **({"previewTraffic": preview.to_json(now)} if preview is not None else {}),
    }


def status_json(
    view: ClusterView, only: str | None, *, traffic: Mapping[str, TrafficSnapshot] | None = None
) -> dict[str, Any]:
    """The status document. ``traffic``: route -> its figures (the daemon passes what it
    reads now); None reads the snapshots the daemon last stored."""
    live = view.live
    if traffic is None:
        stored = view.store.list_traffic() if view.store is not None else []
        traffic = {snap.service: snap for snap in stored}
    now = time.time()
    last_error = None
    if view.store is not None:
        attempted = view.store.last_attempted_revision()
        if attempted is not None and str(attempted.result) in ("failed", "rolled-back"):
            last_error = attempted.reason or f"the last revision {attempted.result}"
    services = [s for name, s in sorted(live.services.items()) if only in (None, name)]
    measurements: dict[str, list[dict[str, Any]]] = {}
    if only is not None and view.store is not None:
        measurements[only] = [
            {
                "analysis": m.analysis,
                "revision": m.revision,
                "phase": str(m.phase),
                "takenAt": m.taken_at,
                "message": m.message,
                "value": dict(m.value),
            }
            for m in view.store.list_measurements(only, limit=None)[-20:]
        ]
    backoff: dict[str, dict[int, BackoffRecord]] = {}
    for record in view.store.list_backoff() if view.store is not None else []:
        backoff.setdefault(record.service, {})[record.slot] = record
    daemon_error = _daemon_error(view)
    if daemon_error is not None:
        last_error = daemon_error.get("message") or last_error
    return {
        "cluster": live.cluster or None,
        "revision": live.last_applied_revision,
        "lastError": last_error,
        "nodes": [
            {"name": n.name, "driver": n.driver, "ready": n.ready, "message": n.message}
            for n in live.nodes.values()
        ],
        "services": [
            {
                **service_json(s, backoff.get(s.name), now),
                **({"analysis": measurements[s.name]} if s.name in measurements else {}),
                **traffic_json(s.name, traffic, now),
            }
            for s in services
        ],
        **({"lastErrorDetail": daemon_error.get("diagnostics", [])} if daemon_error else {}),
    }


def _daemon_error(view: ClusterView) -> dict[str, Any] | None:
    """The error a running daemon reports (an invalid newest commit, an unreachable repo)."""
    if view.state_dir is None or lock_holder(view.state_dir) is None:
        return None
    from gitorch.daemon import read_daemon_file

    data = read_daemon_file(view.state_dir)
    error = data.get("lastError") if data else None
    return error if isinstance(error, dict) else None


def _from_server(server: str, service: str | None, token: str | None = None) -> dict[str, Any]:
    from gitorch.commands.history import fetch_json

    data = fetch_json(f"{server.rstrip('/')}/api/v1/status", server, token=token)
    if not isinstance(data, dict):
        raise GitorchError(f"the daemon at {server} answered an unexpected status document")
    if service is not None:
        services = [s for s in data.get("services", []) if s.get("name") == service]
        if not services:
            raise GitorchError(f"no service named {service!r} is applied or running")
        data = {**data, "services": services}
    return data


def run(args: argparse.Namespace) -> int:
    if args.server:
        data = _from_server(args.server, args.service, client_token(args))
        if args.format == "json":
            print_json(data)
        else:
            render(data, detail=args.service is not None)
        return 0
    view = open_view(args)
    try:
        if args.service and args.service not in view.live.services:
            raise GitorchError(f"no service named {args.service!r} is applied or running")
        view.live = assess_readiness(view.live, view.runtimes)
        data = status_json(view, args.service)
    finally:
        view.close()
    if args.format == "json":
        print_json(data)
        return 0
    render(data, detail=args.service is not None)
    return 0


def _age(started: float | None) -> str:
    if not started:
        return "-"
    seconds = int(time.time() - started)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render(data: dict[str, Any], *, detail: bool) -> None:
    console = stdout()
    down = [n for n in data["nodes"] if not n["ready"]]
    nodes_text = ", ".join(
        f"{escape(n['name'])} ({n['driver']}{'' if n['ready'] else ', [red]NotReady[/]'})"
        for n in data["nodes"]
    )
    console.print(
        f"cluster [bold]{escape(data['cluster'] or '-')}[/] revision {short(data['revision'])}  nodes: {nodes_text}"
    )
    for node in down:
        console.print(f"  [red]node {escape(node['name'])} NotReady:[/] {escape(node['message'])}")
    if data["lastError"]:
        console.print(f"[red]last error:[/] {escape(data['lastError'])}")
        for line in data.get("lastErrorDetail", []):
            console.print(f"  {escape(line)}")
    if not data["services"]:
        console.print("no services applied or running")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("SERVICE", "REVISION", "PHASE", "READY", "UPDATED", "ENDPOINT"):
        table.add_column(column)
    for svc in data["services"]:
        reps = svc["replicas"]
        ready = f"{reps['ready']}/{reps['desired']}"
        style = "green" if reps["ready"] >= reps["desired"] else "yellow"
        endpoint = svc["endpoint"]
        table.add_row(
            escape(svc["name"]),
            short(svc["revision"]),
            _phase(svc["rollout"]["phase"]),
            f"[{style}]{ready}[/]",
            str(reps["updated"]),
            f":{endpoint['port']} ({endpoint['protocol']})" if endpoint else "-",
        )
    console.print(table)
    _problems(console, data["services"])
    if not detail:
        return
    for svc in data["services"]:
        if svc["rollout"]["lastError"]:
            console.print(f"[red]rollout error:[/] {escape(svc['rollout']['lastError'])}")
        for measured in svc.get("analysis", []):
            colour = {"successful": "green", "failed": "red"}.get(
                str(measured.get("phase")), "yellow"
            )
            console.print(
                f"  analysis {escape(str(measured.get('analysis', '')))}: "
                f"[{colour}]{measured.get('phase')}[/] {escape(str(measured.get('message', '')))}"
            )
        instances = Table(box=None, pad_edge=False, title=None)
        for column in (
            "REPLICA",
            "NODE",
            "REVISION",
            "STATE",
            "READY",
            "ADDRESS",
            "AGE",
            "RESTARTS",
        ):
            instances.add_column(column)
        for inst in svc["instances"]:
            ready = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[inst["ready"]]
            instances.add_row(
                escape(inst["replica"]),
                escape(inst["node"]),
                short(inst["revision"]),
                inst["state"] + (f" ({inst['exitCode']})" if inst["exitCode"] is not None else ""),
                ready,
                inst["address"] or "-",
                _age(inst["startedAt"]),
                str(inst["restarts"]),
            )
        console.print(instances)
        if svc.get("endpoint"):
            render_traffic(console, svc.get("traffic"), "traffic")
        if svc.get("previewTraffic"):
            render_traffic(console, svc["previewTraffic"], "preview traffic")


def _problems(console: Any, services: list[dict[str, Any]]) -> None:
    """What needs a look, one line each: a service's own failure, slots in back-off."""
    for svc in services:
        failure = svc.get("failure")
        if failure:
            retry = failure.get("retryInSeconds") or 0
            console.print(
                f"[red]{escape(svc['name'])}: {escape(str(failure['message']))}[/] "
                f"({failure['failures']} failure(s)"
                + (f", retry in {retry:.0f}s" if retry > 0 else ", retrying")
                + ")"
            )
        for slot in svc.get("backoff", []):
            retry = slot.get("retryInSeconds") or 0
            cause = slot.get("lastCause") or "exited"
            wait = f"back-off {retry:.0f}s left, " if retry > 0 else ""
            console.print(
                f"[yellow]{escape(slot['replica'])}[/]: {wait}{slot['restarts']} restart(s), "
                f"last: {escape(str(cause))}"
            )


def render_traffic(console: Any, traffic: Mapping[str, Any] | None, title: str) -> None:
    """The per-version traffic table of one route, with the age of its figures."""
    if traffic is None:
        console.print(f"{title}: no figures stored yet (a running daemon stores them)")
        return
    console.print(
        f"{title} ({escape(str(traffic['dataPlane']))}, as of {_ago(traffic['ageSeconds'])}; "
        f"{traffic['requests']} requests since the daemon started counting)"
    )
    if not traffic["versions"]:
        console.print("  no version serves")
        return
    # One space between columns: 11 columns fit in 80 (what rich assumes off a terminal).
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("VERSION", "REV", "WEIGHT", "SHARE", "REQUESTS", "5XX", "SUCCESS"):
        table.add_column(column, justify="left" if column in ("VERSION", "REV") else "right")
    for column in ("P50", "P90", "P99", "OPEN"):
        table.add_column(column, justify="right")
    for v in traffic["versions"]:
        rate = v["successRate"]
        table.add_row(
            escape(v["version"]),
            escape((v["revision"] or "-")[:7]),
            f"{v['weight']}%",
            "-" if v["share"] is None else f"{v['share']:.1f}%",
            str(v["requests"]),
            str(v["errors5xx"]),
            "-" if rate is None else f"{100 * rate:.1f}%",
            _latency(v["p50Ms"]),
            _latency(v["p90Ms"]),
            _latency(v["p99Ms"]),
            str(v["openConnections"]),
        )
    console.print(table)


def _ago(seconds: float) -> str:
    whole = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size} {unit} ago"
    return f"{whole} s ago"


def _latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 10:
        return f"{ms:.1f}ms"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def _phase(phase: str) -> str:
    colour = {
        "Healthy": "green",
        "Progressing": "cyan",
        "Paused": "yellow",
        "Degraded": "red",
        "RolledBack": "magenta",
    }.get(phase, "white")
    return f"[{colour}]{phase}[/]"

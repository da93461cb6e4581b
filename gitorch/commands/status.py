"""``gitorch status [SERVICE]``: services, replicas, versions, rollout phase, nodes, last error."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitorch.commands.common import (
    ELSEWHERE,
    add_format_option,
    add_runtime_option,
    add_state_option,
    local_state_dir,
    print_json,
    short,
    stderr,
    stdout,
)
from gitorch.commands.remote import TOKEN_ENV, add_token_option
from gitorch.errors import GitorchError

if TYPE_CHECKING:
    import ssl

# What the daemon's path loads is kept small (issue 20: status < 300 ms as a process):
# rich, the store and the live side are imported where the other paths need them.

EXAMPLE = """example:
  gitorch status
  gitorch status --wide            # every replica of every service
  gitorch status web --format json
"""

#: How long a local status waits for its daemon before observing by itself (seconds).
LOCAL_DAEMON_TIMEOUT = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="services, replicas, versions, rollout phase, nodes, last error",
        description="Show what runs now: every service's replicas (desired, ready, updated), the "
        "revision live, the rollout phase, and each replica's node and address. While a daemon "
        "runs on the state directory, it answers (its last observation, with observedAt and "
        "its age); else replicas are observed from the runtimes and probed once with their "
        "readiness probe. The table has a line per service; --wide adds every replica (as "
        "`gitorch status SERVICE` shows one service's). Exit 0; 1 when there is no state "
        "store where it looks (nothing was applied there).",
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
    parser.add_argument(
        "--wide",
        "-w",
        action="store_true",
        help="text format: list every replica of every service (its node, state, address)",
    )
    add_token_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def _from_server(
    server: str,
    service: str | None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    from gitorch.commands.common import looked_in
    from gitorch.commands.remote import fetch_json

    data = fetch_json(f"{server.rstrip('/')}/api/v1/status", server, token=token, context=context)
    if not isinstance(data, dict):
        raise GitorchError(f"the daemon at {server} answered an unexpected status document")
    if service is not None:
        services = [s for s in data.get("services", []) if s.get("name") == service]
        if not services:
            raise GitorchError(
                f"no service named {service!r} is applied or running {looked_in(None, server)}"
            )
        data = {**data, "services": services}
    return data


def _from_local_daemon(args: argparse.Namespace) -> dict[str, Any] | bytes | None:
    """The status of the daemon running on this state directory, through its API (what
    it last observed, with its age: observing thousands of replicas again took seconds);
    None when no daemon holds the directory or it does not answer (status then observes
    itself). Not for one service's detail (its analysis measurements are read from the
    store), nor with etcd state (ask a daemon with --server), nor a TLS API.

    With ``--format json`` the daemon's text, indented as :func:`print_json` writes it,
    is returned as it came (bytes): parsing 2 MB of 4,000 replicas and writing it again
    was a fifth of the process. Loads no store module: the daemon file names the daemon's
    pid and URL, and the answer counts only when it comes from that pid (its
    ``Gitorch-Pid`` header), so a dead daemon's file, or another process on its old
    port, is never taken for this directory's daemon."""
    directory = local_state_dir(args)
    if directory is None or getattr(args, "runtime", None) or args.service is not None:
        return None
    from gitorch.readmodel.daemon_file import read_daemon_file

    info = read_daemon_file(directory) or {}
    url, pid = info.get("url"), info.get("pid")
    if not isinstance(url, str) or not url.startswith("http://") or not isinstance(pid, int):
        return None
    if not Path(f"/proc/{pid}").exists():
        return None  # it died without removing its file (kill -9)
    raw = args.format == "json"
    token = os.environ.get(TOKEN_ENV, "").strip() or None
    answer = _get_local(url, token, indent=raw)
    if answer is None or answer[0] != str(pid):
        return None
    if raw:
        return answer[1]
    import orjson

    try:
        data = orjson.loads(answer[1])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _get_local(url: str, token: str | None, *, indent: bool) -> tuple[str, bytes] | None:
    """GET the status document of a daemon on this host (plain HTTP): the answering
    process's pid (its ``Gitorch-Pid`` header) and the body; None when it does not
    answer it (status then observes by itself)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=LOCAL_DAEMON_TIMEOUT
    )
    try:
        conn.request(
            "GET", "/api/v1/status?indent=2" if indent else "/api/v1/status", headers=headers
        )
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return response.getheader("Gitorch-Pid", ""), body
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def run(args: argparse.Namespace) -> int:
    from gitorch.commands.remote import client_tls, client_token

    daemon = None if args.server else _from_local_daemon(args)
    if args.server:
        data = _from_server(args.server, args.service, client_token(args), client_tls(args))
    elif isinstance(daemon, bytes):
        # --format json: the daemon's text, as print_json writes it.
        sys.stdout.write(daemon.decode("utf-8"))
        sys.stdout.flush()
        return 0
    elif daemon is not None:
        data = daemon
    else:
        data = _observed(args)
    if args.format == "json":
        print_json(data)
        return 0
    render(data, detail=args.service is not None, wide=getattr(args, "wide", False))
    if not data["services"]:
        from rich.markup import escape

        from gitorch.commands.common import looked_in, state_location

        where = looked_in(None if args.server else state_location(args), args.server)
        stdout().print(f"no services applied or running {escape(where)}")
        stderr().print(f"hint: {escape(ELSEWHERE)}")
    return 0


def _observed(args: argparse.Namespace) -> dict[str, Any]:
    """The status without a daemon: the store read, the runtimes observed, each replica
    probed once."""
    from gitorch.commands.cluster import open_view
    from gitorch.commands.common import looked_in, require_state, state_location
    from gitorch.live.observe import assess_readiness
    from gitorch.readmodel.status import status_json

    location = state_location(args)
    require_state(location)
    view = open_view(args)
    try:
        if args.service and args.service not in view.live.services:
            raise GitorchError(
                f"no service named {args.service!r} is applied or running "
                f"{looked_in(location, None)}"
            )
        view.live = assess_readiness(view.live, view.runtimes)
        return status_json(view, args.service)
    finally:
        view.close()


def _age(started: float | None) -> str:
    if not started:
        return "-"
    seconds = int(time.time() - started)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _control_plane(console: Any, plane: dict[str, Any]) -> None:
    """With etcd state: who leads, who stands by, what this daemon is, and why it does not
    act when it does not; the etcd members that do not answer."""
    if plane.get("backend") == "sqlite" and "daemon" in plane and plane["daemon"] is None:
        serving = (
            "replicas and the proxy keep serving"
            if plane.get("dataPlane", True)
            else "replicas keep running, but no proxy serves their endpoints"
        )
        console.print(
            "[yellow]no daemon holds this state: nothing reconciles or replaces failed "
            f"replicas until `gitorch daemon` runs ({serving})[/]"
        )
    if plane.get("backend") != "etcd":
        return
    members = plane.get("members") or []
    leader = plane.get("leader")
    standby = [
        m["name"] for m in members if m.get("name") != leader and m.get("role") != "stand-in"
    ]
    # A host whose daemon is gone, kept on the leader's table by the daemon's stand-in.
    stand_ins = [str(m.get("standsInFor")) for m in members if m.get("role") == "stand-in"]
    line = f"control plane {escape(str(plane.get('location')))}: leader " + (
        f"[bold]{escape(str(leader))}[/]" if leader else "[red]none[/]"
    )
    if plane.get("leaderSince"):
        line += f" since {escape(str(plane['leaderSince']))}"
    line += f", standby: {escape(', '.join(standby) or '-')}"
    if stand_ins:
        line += f", daemon gone (its stand-in follows): {escape(', '.join(stand_ins))}"
    if plane.get("self"):
        line += f"  (this daemon: {escape(str(plane['self']))}, {escape(str(plane.get('role')))})"
    console.print(line)
    if plane.get("message"):
        colour = "red" if plane.get("role") in (None, "not acting") else "yellow"
        console.print(f"  [{colour}]{escape(str(plane['message']))}[/]")
    for member in members:
        state = str(member.get("table") or "")
        if state == "behind" or state.startswith("refused: "):
            why = (
                "has not taken the leader's routing table yet"
                if state == "behind"
                else f"serves the leader's routing table without {state.removeprefix('refused: ')}"
            )
            console.print(f"  [yellow]{escape(str(member.get('name')))}'s host {escape(why)}[/]")
    for member in plane.get("etcd") or []:
        if not member.get("ok"):
            console.print(
                f"  [red]etcd {escape(str(member.get('endpoint')))}:[/] "
                f"{escape(str(member.get('message')))}"
            )


#: A table cell: its text and its colour (None: plain).
Cell = tuple[str, str | None]

#: The columns of a replica's line (``status SERVICE``, ``status --wide``).
INSTANCE_COLUMNS = ("REPLICA", "NODE", "REVISION", "STATE", "READY", "ADDRESS", "AGE", "RESTARTS")


def escape(text: str) -> str:
    """``text`` safe inside rich markup (rich is loaded only when text is printed)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def write_table(console: Any, headers: tuple[str, ...], rows: list[list[Cell]]) -> None:
    """Columns padded to their widest cell, two spaces apart, a bold header: what rich's
    borderless table prints, written directly (rich's table took seconds over 2,000
    services). Colours only where the console shows them; long lines are not wrapped."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, (text, _) in enumerate(row):
            widths[i] = max(widths[i], len(text))
    colour = console.is_terminal and not console.no_color
    last = len(headers) - 1

    def line(cells: list[Cell], bold: bool = False) -> str:
        out = []
        for i, (text, style) in enumerate(cells):
            pad = "" if i == last else " " * (widths[i] - len(text))
            if colour and (style or bold):
                code = _ANSI.get(style or "bold", "")
                out.append(f"\x1b[{code}m{text}\x1b[0m{pad}")
            else:
                out.append(text + pad)
        return "  ".join(out).rstrip()

    text = "\n".join([line([(h, None) for h in headers], bold=True), *(line(r) for r in rows)])
    console.file.write(text + "\n")
    console.file.flush()


_ANSI = {
    "bold": "1",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "magenta": "35",
    "cyan": "36",
    "white": "37",
}


def _instance_cells(inst: Mapping[str, Any]) -> list[Cell]:
    ready: Cell = {True: ("yes", "green"), False: ("no", "red"), None: ("?", None)}[inst["ready"]]
    state = inst["state"] + (f" ({inst['exitCode']})" if inst["exitCode"] is not None else "")
    return [
        (inst["replica"], None),
        (inst["node"], None),
        (short(inst["revision"]), None),
        (state, None),
        ready,
        (inst["address"] or "-", None),
        (_age(inst["startedAt"]), None),
        (str(inst["restarts"]), None),
    ]


def render(data: dict[str, Any], *, detail: bool, wide: bool = False) -> None:
    """The text form of a status document (``wide``: every replica of every service)."""
    console = stdout()
    down = [n for n in data["nodes"] if not n["ready"]]
    nodes_text = ", ".join(
        f"{escape(n['name'])} ({n['driver']}{'' if n['ready'] else ', [red]NotReady[/]'})"
        for n in data["nodes"]
    )
    applying = f" (applying {short(data['applying'])})" if data.get("applying") else ""
    console.print(
        f"cluster [bold]{escape(data['cluster'] or '-')}[/] revision {short(data['revision'])}"
        f"{applying}  nodes: {nodes_text}"
    )
    for node in down:
        console.print(f"  [red]node {escape(node['name'])} NotReady:[/] {escape(node['message'])}")
    _control_plane(console, data.get("controlPlane") or {})
    _node_pools(console, data.get("nodePools") or [])
    if data["lastError"]:
        console.print(f"[red]last error:[/] {escape(data['lastError'])}")
        for line in data.get("lastErrorDetail", []):
            console.print(f"  {escape(line)}")
    if not data["services"]:
        return  # the caller says where it looked
    rows: list[list[Cell]] = []
    for svc in data["services"]:
        reps = svc["replicas"]
        endpoint = svc["endpoint"]
        rows.append(
            [
                (svc["name"], None),
                (short(svc["revision"]), None),
                _phase(svc["rollout"]["phase"]),
                (
                    f"{reps['ready']}/{reps['desired']}",
                    "green" if reps["ready"] >= reps["desired"] else "yellow",
                ),
                (str(reps["updated"]), None),
                (f":{endpoint['port']} ({endpoint['protocol']})" if endpoint else "-", None),
            ]
        )
    write_table(console, ("SERVICE", "REVISION", "PHASE", "READY", "UPDATED", "ENDPOINT"), rows)
    _autoscaling(console, data["services"])
    _problems(console, data["services"])
    if wide and not detail:
        replicas = [
            [(svc["name"], None), *_instance_cells(inst)]
            for svc in data["services"]
            for inst in svc["instances"]
        ]
        if replicas:
            write_table(console, ("SERVICE", *INSTANCE_COLUMNS), replicas)
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
                f"  analysis {escape(str(measured.get('label') or measured.get('analysis', '')))}: "
                f"[{colour}]{measured.get('phase')}[/] {escape(str(measured.get('message', '')))}"
            )
        write_table(console, INSTANCE_COLUMNS, [_instance_cells(i) for i in svc["instances"]])
        if svc.get("endpoint"):
            render_traffic(console, svc.get("traffic"), "traffic")
        if svc.get("previewTraffic"):
            render_traffic(console, svc["previewTraffic"], "preview traffic")


def _autoscaling(console: Any, services: list[dict[str, Any]]) -> None:
    """One line per autoscaled service: count and bounds, each metric, the last change."""
    for svc in services:
        auto = svc.get("autoscale")
        if not auto:
            continue
        count = "-" if auto["desired"] is None else str(auto["desired"])
        readings = "; " + ", ".join(_reading(m) for m in auto["metrics"]) if auto["metrics"] else ""
        console.print(
            f"{escape(svc['name'])}: autoscaled to {count} (min {auto['min']}, max {auto['max']})"
            f"{escape(readings)}"
        )
        if auto.get("decidedAt") is not None:
            changed = auto.get("changedAt")
            when = f"; last change {_age(changed)} ago" if changed else ""
            console.print(
                f"  decided {_ago(auto.get('ageSeconds') or 0)}: {escape(auto['reason'])}{when}"
            )
        for line in (auto.get("vertical") or {}).get("lines", []):
            console.print(f"  recommended: {escape(line)}")


def _node_pools(console: Any, pools: list[dict[str, Any]]) -> None:
    """One line per NodePool (nodes and bounds), its nodes, its last decision, its error."""
    for pool in pools:
        nodes = pool["nodes"]
        bounds = (
            f"(min {pool['minNodes']}, max {pool['maxNodes']})"
            if pool["inGit"]
            else "(left Git: its nodes are drained and deleted)"
        )
        listed = ", ".join(
            f"{n['name']}"
            + (" [yellow]draining[/]" if n["state"] == "draining" else "")
            + ("" if n["ready"] else " [red]not answering[/]")
            + (f" {n['utilization']:.0%} requested" if n.get("utilization") is not None else "")
            for n in nodes
        )
        console.print(
            f"node pool [bold]{escape(pool['name'])}[/]: {len(nodes)} node(s) {bounds}"
            + (f": {listed}" if listed else "")
        )
        if pool.get("pendingSince") is not None:
            console.print(f"  replicas wait for a node since {_age(pool['pendingSince'])}")
        last = pool.get("lastDecision")
        if last:
            console.print(
                f"  last change {_age(last.get('at'))} ago: {escape(str(last.get('action')))}, "
                f"{last.get('from')} -> {last.get('to')} nodes ({escape(str(last.get('reason')))})"
            )
        if pool.get("error"):
            console.print(f"  [red]provider error:[/] {escape(pool['error'])}")


def _reading(metric: Mapping[str, Any]) -> str:
    name = str(metric.get("metric"))
    unit = {"cpu": "%", "memory": "%", "latency": "ms", "rps": " rps"}.get(name, "")
    value = metric.get("value")
    target = metric.get("target")
    if value is None:
        return f"{name} not measured ({metric.get('message') or 'no reading'})"
    return f"{name} {value:g}{unit} of {target:g}{unit} -> {metric.get('proposal')}"


def _problems(console: Any, services: list[dict[str, Any]]) -> None:
    """What needs a look, one line each: a service's own failure, what a service that is
    not Healthy is at or waits for (its rollout's message), slots in back-off."""
    for svc in services:
        failure = svc.get("failure")
        rollout = svc["rollout"]
        if failure:
            retry = failure.get("retryInSeconds") or 0
            console.print(
                f"[red]{escape(svc['name'])}: {escape(str(failure['message']))}[/] "
                f"({failure['failures']} failure(s)"
                + (f", retry in {retry:.0f}s" if retry > 0 else ", retrying")
                + ")"
            )
        elif rollout["phase"] == "RolledBack" and rollout.get("lastError"):
            # Its message is the rollback's own progress ("2/2 updated"): say why instead.
            console.print(
                f"[yellow]{escape(svc['name'])}[/]: rolled back: {escape(rollout['lastError'])}"
            )
        elif rollout["phase"] != "Healthy" and rollout.get("message"):
            console.print(f"[yellow]{escape(svc['name'])}[/]: {escape(str(rollout['message']))}")
        for slot in svc.get("backoff", []):
            retry = slot.get("retryInSeconds") or 0
            cause = slot.get("lastCause") or "exited"
            wait = f"back-off {retry:.0f}s left, " if retry > 0 else ""
            # A start that failed ran no replica: it is not a restart of one.
            failed = slot.get("failedStarts") or 0
            count = f"{failed} failed start(s)" if failed else f"{slot['restarts']} restart(s)"
            which = " (stable version)" if slot.get("stable") else ""
            console.print(
                f"[yellow]{escape(slot['replica'])}[/]{which}: {wait}{count}, "
                f"last: {escape(str(cause))}"
            )
    crash_looping = [
        svc["name"] for svc in services if any(b["restarts"] for b in svc.get("backoff", []))
    ]
    if crash_looping:
        console.print(f"why they exited: gitorch logs {escape(crash_looping[0])} --previous")


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
    from rich.table import Table

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


def _phase(phase: str) -> Cell:
    colour = {
        "Healthy": "green",
        "Progressing": "cyan",
        "Paused": "yellow",
        "Degraded": "red",
        "RolledBack": "magenta",
    }.get(phase, "white")
    return (phase, colour)

"""The dashboard's pages as HTML, from the documents the API serves (pure functions).

Each page is server-rendered and complete without JavaScript; ``app.js`` only swaps the
``<main>`` element when the daemon says something changed, and asks before an action.
Every value from the cluster, Git or a manifest goes through :func:`esc`; secret values
never reach these functions (the plan and history carry them redacted at the source).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlsplit

from gitorch.readmodel.history import volume_fate

#: How the diff layer marks a redacted secret value (gitorch.diff.fields.SENSITIVE).
_SENSITIVE_WORDS = ("(sensitive value)", "(sensitive)")


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class PageContext:
    """What every page needs besides its document: who looks and what they may do."""

    viewer_name: str | None
    can_write: bool
    signed_in: bool
    needs_login: bool  # tokens are configured (there is a login at all)
    csrf: str
    writers: Sequence[str] = ()
    flash: str = ""


_PHASE_CLASS = {
    "Healthy": "ok",
    "Progressing": "busy",
    "Paused": "paused",
    "Degraded": "bad",
    "RolledBack": "bad",
    "Failed": "bad",
}


def phase_badge(phase: str | None) -> str:
    name = phase or "Unknown"
    return f'<span class="badge {_PHASE_CLASS.get(name, "muted")}">{esc(name)}</span>'


def when(value: object) -> str:
    """An ISO time or epoch seconds as a short UTC time (the full value on hover)."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(float(value), tz=UTC)
        else:
            moment = datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return esc(value)
    full = moment.astimezone(UTC).isoformat(timespec="seconds")
    return f'<time datetime="{esc(full)}" title="{esc(full)}">{esc(moment.strftime("%Y-%m-%d %H:%M:%S"))}</time>'


def short(revision: object) -> str:
    text = "" if revision is None else str(revision)
    return f'<code title="{esc(text)}">{esc(text[:12]) or "-"}</code>'


def page(title: str, body: str, ctx: PageContext, *, active: str = "") -> str:
    """A whole HTML document around ``body`` (the content of ``<main>``)."""
    links = [("/", "Cluster"), ("/history", "History"), ("/plan", "Plan"), ("/audit", "Audit")]
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if href == active else ""}>{label}</a>'
        for href, label in links
    )
    who = ""
    if ctx.needs_login:
        if ctx.signed_in:
            role = "write" if ctx.can_write else "read-only"
            who = (
                f'<form method="post" action="/logout" class="inline">'
                f'<span class="who">{esc(ctx.viewer_name)} ({role})</span> '
                f'<input type="hidden" name="csrf" value="{esc(ctx.csrf)}">'
                f'<button type="submit" class="link">Sign out</button></form>'
            )
        else:
            who = '<a href="/login">Sign in</a>'
    flash = f'<p class="flash" role="status">{esc(ctx.flash)}</p>' if ctx.flash else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{esc(title)} · gitorch</title>"
        '<link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/app.js" defer></script>'
        "</head><body>"
        f'<header><a class="brand" href="/">gitorch</a><nav>{nav}</nav>'
        f'<div class="session">{who}</div></header>'
        f'<main id="main" data-live="1">{flash}{body}</main>'
        "</body></html>\n"
    )


def action_form(
    ctx: PageContext, action: str, label: str, *, service: str = "", node: str = "",
    question: str = "", back: str = "/",
) -> str:  # fmt: skip
    """A button that POSTs an action; only for viewers who may act (read-only: nothing)."""
    if not ctx.can_write:
        return ""
    fields = {"action": action, "csrf": ctx.csrf, "back": back}
    if service:
        fields["service"] = service
    if node:
        fields["node"] = node
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items()
    )
    return (
        f'<form method="post" action="/actions" class="inline action" '
        f'data-confirm="{esc(question or label + "?")}">{hidden}'
        f'<button type="submit" name="confirmed" value="1" data-action="{esc(action)}">'
        f"{esc(label)}</button></form>"
    )


# -- the cluster ---------------------------------------------------------------------------


def cluster_body(status: Mapping[str, Any], ctx: PageContext) -> str:
    services = status.get("services") or []
    error = status.get("lastError")
    parts = [
        '<section class="summary">',
        f"<div><h1>Cluster {esc(status.get('cluster') or '')}</h1>",
        f"<p>Applied revision {short(status.get('revision'))}",
    ]
    tracking = status.get("tracking") or {}
    if tracking:
        parts.append(
            f" · tracking <code>{esc(tracking.get('repo'))}</code>"
            f"{' ref ' + esc(tracking.get('ref')) if tracking.get('ref') else ''}"
        )
    control = status.get("controlPlane")
    if isinstance(control, Mapping) and control.get("leader"):
        parts.append(f" · leader <b>{esc(control.get('leader'))}</b>")
    parts.append("</p></div>")
    parts.append(action_form(ctx, "reconcile", "Reconcile now", question="Reconcile now?"))
    parts.append("</section>")
    if error:
        parts.append(f'<div class="error" role="alert"><b>Last error:</b> {esc(error)}')
        detail = status.get("lastErrorDetail") or []
        if detail:
            parts.append("<ul>")
            for item in detail:
                parts.append(f"<li><code>{esc(_diagnostic(item))}</code></li>")
            parts.append("</ul>")
        parts.append("</div>")
    parts.append('<h2>Services</h2><table class="services"><thead><tr>')
    for column in ("Service", "Phase", "Ready", "Version", "Endpoint", "Message"):
        parts.append(f"<th>{column}</th>")
    parts.append("</tr></thead><tbody>")
    for service in services:
        parts.append(_service_row(service))
    if not services:
        parts.append('<tr><td colspan="6" class="muted">no services applied yet</td></tr>')
    parts.append("</tbody></table>")
    parts.append(_nodes_table(status.get("nodes") or [], ctx))
    parts.append(_node_pools(status.get("nodePools") or []))
    volumes = status.get("volumes") or []
    if volumes:
        parts.append("<h2>Volumes</h2><table><thead><tr><th>Volume</th><th>Node</th>")
        parts.append("<th>Phase</th><th>Mode</th><th>Size</th><th>Users</th></tr></thead><tbody>")
        for volume in volumes:
            parts.append(
                f"<tr><td>{esc(volume.get('name'))}</td><td>{esc(volume.get('node'))}</td>"
                f"<td>{esc(volume.get('phase'))}</td><td>{esc(volume.get('accessMode'))}</td>"
                f"<td>{esc(volume.get('size'))}</td>"
                f"<td>{esc(', '.join(volume.get('users') or []) or '-')}</td></tr>"
            )
        parts.append("</tbody></table>")
    return "".join(parts)


def _diagnostic(item: object) -> str:
    if isinstance(item, Mapping):
        where = ":".join(str(item[k]) for k in ("path", "line", "column") if item.get(k))
        return f"{where}: {item.get('message', '')}" if where else str(item.get("message", ""))
    return str(item)


def _service_row(service: Mapping[str, Any]) -> str:
    name = str(service.get("name", ""))
    replicas = service.get("replicas") or {}
    rollout = service.get("rollout") or {}
    endpoint = service.get("endpoint") or {}
    ready, desired = replicas.get("ready", 0), replicas.get("desired", 0)
    bar = _bar(ready, desired)
    return (
        f'<tr data-service="{esc(name)}">'
        f'<td><a href="/services/{quote(name)}">{esc(name)}</a></td>'
        f'<td class="phase">{phase_badge(rollout.get("phase"))}</td>'
        f'<td class="ready">{ready}/{desired} {bar}</td>'
        f"<td>{short(service.get('revision'))}</td>"
        f"<td>{esc(endpoint.get('port')) if endpoint else '-'}</td>"
        f'<td class="message">{esc(rollout.get("lastError") or rollout.get("message") or "")}</td>'
        "</tr>"
    )


def _bar(value: float, whole: float) -> str:
    """A bar filled to ``value / whole``. An SVG whose fill is a ``width`` attribute: the
    page's Content-Security-Policy (``default-src 'self'``) drops inline ``style``
    attributes, which drew every bar full."""
    share = 0.0 if not whole else max(0.0, min(1.0, value / whole))
    return (
        f'<svg class="bar" role="img" aria-label="{round(share * 100)}%" '
        'viewBox="0 0 100 1" preserveAspectRatio="none">'
        f'<rect class="fill" width="{share * 100:.1f}" height="1"/></svg>'
    )


def _nodes_table(nodes: Iterable[Mapping[str, Any]], ctx: PageContext) -> str:
    rows = []
    for node in nodes:
        name = str(node.get("name", ""))
        state = "Ready" if node.get("ready") else "NotReady"
        drain = action_form(
            ctx, "drain", "Drain", node=name, question=f"Drain node {name}? Its replicas move."
        ) + action_form(
            ctx, "undrain", "Undo drain", node=name, question=f"Make {name} schedulable?"
        )
        rows.append(
            f"<tr><td>{esc(name)}</td><td>{esc(node.get('driver'))}</td>"
            f'<td><span class="badge {"ok" if node.get("ready") else "bad"}">{state}</span></td>'
            f"<td>{_allocation(node, 'cpu')}</td><td>{_allocation(node, 'memory')}</td>"
            f"<td>{esc(node.get('replicas', ''))}</td>"
            f"<td>{esc(node.get('message') or '')}</td><td>{drain}</td></tr>"
        )
    return (
        '<h2>Nodes</h2><table class="nodes"><thead><tr><th>Node</th><th>Driver</th>'
        "<th>State</th>"
        "<th>CPU requested</th><th>Memory requested</th><th>Replicas</th>"
        "<th>Message</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _node_pools(pools: Sequence[Mapping[str, Any]]) -> str:
    """Each NodePool: its nodes against its bounds, each node's state and share requested,
    the last change and the provider's error."""
    if not pools:
        return ""
    rows = []
    for pool in pools:
        nodes = pool.get("nodes") or []
        bounds = (
            f"{pool.get('minNodes')}–{pool.get('maxNodes')}"
            if pool.get("inGit")
            else "left Git: draining"
        )
        listed = "".join(
            f'<li data-node="{esc(n.get("name"))}">{esc(n.get("name"))} '
            f'<span class="badge {"busy" if n.get("state") == "draining" else "ok"}">'
            f"{esc(n.get('state'))}</span>"
            + (
                f" {round(float(n['utilization']) * 100)}% requested"
                if isinstance(n.get("utilization"), int | float)
                else ""
            )
            + ("" if n.get("ready") else ' <span class="badge bad">not answering</span>')
            + "</li>"
            for n in nodes
        )
        last = pool.get("lastDecision") or {}
        change = (
            f"{when(last.get('at'))}: {esc(last.get('action'))}, {esc(last.get('from'))} → "
            f"{esc(last.get('to'))} ({esc(last.get('reason'))})"
            if last
            else "-"
        )
        waiting = (
            f"<br>replicas wait for a node since {when(pool.get('pendingSince'))}"
            if pool.get("pendingSince") is not None
            else ""
        )
        error = (
            f'<br><span class="error-text">{esc(pool.get("error"))}</span>'
            if pool.get("error")
            else ""
        )
        rows.append(
            f'<tr data-pool="{esc(pool.get("name"))}"><td>{esc(pool.get("name"))}</td>'
            f"<td>{len(nodes)} ({esc(bounds)})</td>"
            f'<td><ul class="plain">{listed or "<li class=muted>none</li>"}</ul></td>'
            f"<td>{change}{waiting}{error}</td></tr>"
        )
    return (
        '<h2>Node pools</h2><table class="node-pools"><thead><tr><th>Pool</th>'
        "<th>Nodes (min–max)</th><th>Its nodes</th><th>Last change</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _autoscaling(service: Mapping[str, Any]) -> str:
    """The HPA's count against its bounds and what runs, each metric's reading, the last
    decision; the VPA's recommendation (and what mode Auto applied)."""
    auto = service.get("autoscale")
    if not isinstance(auto, Mapping):
        return ""
    replicas = service.get("replicas") or {}
    desired = auto.get("desired")
    parts = [
        '<h2>Autoscaling</h2><div class="autoscale">',
        f'<p class="hpa">current <b>{esc(replicas.get("running", replicas.get("ready", 0)))}</b>'
        f" running · desired <b>{esc('-' if desired is None else desired)}</b>"
        f" · bounds {esc(auto.get('min'))}–{esc(auto.get('max'))}</p>",
    ]
    metrics = auto.get("metrics") or []
    if metrics:
        parts.append(
            "<table><thead><tr><th>Metric</th><th>Value</th><th>Target</th>"
            "<th>Proposal</th></tr></thead><tbody>"
        )
        for metric in metrics:
            value = metric.get("value")
            shown = esc(f"{value:g}") if isinstance(value, int | float) else esc(
                metric.get("message") or "not measured"
            )  # fmt: skip
            target = metric.get("target")
            goal = f"{target:g}" if isinstance(target, int | float) else target
            proposal = metric.get("proposal")
            parts.append(
                f"<tr><td>{esc(metric.get('metric'))}</td><td>{shown}</td>"
                f"<td>{esc(goal)}</td><td>{esc('-' if proposal is None else proposal)}</td></tr>"
            )
        parts.append("</tbody></table>")
    decided = f" ({when(auto.get('decidedAt'))})" if auto.get("decidedAt") else ""
    parts.append(f'<p class="decision">Last decision{decided}: {esc(auto.get("reason"))}</p>')
    vertical = auto.get("vertical")
    if isinstance(vertical, Mapping):
        lines = "".join(f"<li>{esc(line)}</li>" for line in vertical.get("lines") or [])
        parts.append(
            f'<div class="vpa"><p>Vertical ({esc(vertical.get("mode"))}):</p>'
            f'<ul class="plain">{lines or "<li>-</li>"}</ul></div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _allocation(node: Mapping[str, Any], resource: str) -> str:
    """``requested / capacity`` of one resource with a bar (millicores, or bytes in MiB)."""
    used = (node.get("requested") or {}).get(resource)
    whole = (node.get("capacity") or {}).get(resource)
    if not isinstance(used, int) or not isinstance(whole, int) or whole <= 0:
        return "-"
    if resource == "cpu":
        text = f"{used}m / {whole}m"
    else:
        text = f"{used / 2**20:.0f} / {whole / 2**20:.0f} MiB"
    return f'<span class="alloc">{esc(text)}</span> {_bar(used, whole)}'


# -- one service ---------------------------------------------------------------------------


def service_body(
    service: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    ctx: PageContext,
    dead: Sequence[Mapping[str, Any]] = (),
) -> str:
    name = str(service.get("name", ""))
    rollout = service.get("rollout") or {}
    replicas = service.get("replicas") or {}
    back = f"/services/{quote(name)}"
    parts = [
        f'<section class="summary"><div><h1>{esc(name)} {phase_badge(rollout.get("phase"))}</h1>',
        f"<p>revision {short(service.get('revision'))} · "
        f"{replicas.get('ready', 0)}/{replicas.get('desired', 0)} ready, "
        f"{replicas.get('updated', 0)} updated · {esc(rollout.get('message') or '')}</p></div>",
    ]
    in_rollout = rollout.get("phase") in ("Progressing", "Paused")
    if in_rollout:
        parts.append('<div class="actions">')
        parts.append(
            action_form(
                ctx,
                "promote",
                "Promote",
                service=name,
                back=back,
                question=f"Promote the rollout of {name} to its next step?",
            )  # fmt: skip
        )
        parts.append(
            action_form(
                ctx,
                "abort",
                "Abort",
                service=name,
                back=back,
                question=f"Abort the rollout of {name} and go back?",
            )  # fmt: skip
        )
        parts.append("</div>")
    parts.append("</section>")
    if rollout.get("phase") == "Paused":
        who = ", ".join(ctx.writers) if ctx.writers else "anyone who can reach this dashboard"
        parts.append(
            f'<p class="paused-note">Paused at step {esc(_step_number(rollout.get("step")))}: '
            f"promote or abort it here, or with <code>gitorch promote {esc(name)}</code>. "
            f"Who can: {esc(who)}.</p>"
        )
    if rollout.get("lastError"):
        parts.append(f'<div class="error" role="alert">{esc(rollout.get("lastError"))}</div>')
    parts.append(_steps(service))
    parts.append(_autoscaling(service))
    parts.append(_traffic(service.get("traffic")))
    parts.append(_analysis(service.get("analysis") or []))
    parts.append("<h2>Instances</h2><table><thead><tr><th>Replica</th><th>Node</th>")
    parts.append("<th>State</th><th>Ready</th><th>Restarts</th><th>Version</th><th>Address</th>")
    parts.append("<th>Exit</th></tr></thead><tbody>")
    for inst in sorted(
        service.get("instances") or [], key=lambda i: (str(i.get("node")), str(i.get("replica")))
    ):
        parts.append(
            f"<tr><td>{esc(inst.get('replica'))}</td><td>{esc(inst.get('node'))}</td>"
            f"<td>{esc(inst.get('state'))}</td>"
            f"<td>{'yes' if inst.get('ready') else 'no'}</td>"
            f"<td>{esc(inst.get('restarts'))}</td><td>{short(inst.get('revision'))}</td>"
            f"<td>{esc(inst.get('address'))}</td><td>{esc(inst.get('exitReason') or '')}</td></tr>"
        )
    parts.append("</tbody></table>")
    backoff = service.get("backoff") or []
    if backoff:
        parts.append("<h2>Crash back-off</h2><ul>")
        for item in backoff:
            failed = item.get("failedStarts") or 0
            count = (
                f"{esc(failed)} failed starts"
                if failed
                else f"{esc(item.get('restarts'))} restarts"
            )
            which = " (stable version)" if item.get("stable") else ""
            parts.append(
                f"<li>{esc(item.get('replica'))}{which}: {count}, "
                f"last cause {esc(item.get('lastCause'))}, retry in "
                f"{esc(item.get('retryInSeconds'))} s</li>"
            )
        parts.append("</ul>")
    parts.append(events_table(events, title="Recent events", with_service=False))
    parts.append(dead_replicas(dead))
    return "".join(parts)


def _step_number(step: object) -> object:
    """The status document counts steps from 0; people count from 1."""
    return step + 1 if isinstance(step, int) else step


def _steps(service: Mapping[str, Any]) -> str:
    strategy = service.get("strategy") or {}
    kind = strategy.get("type") if isinstance(strategy, Mapping) else None
    if not kind:
        return ""
    rollout = service.get("rollout") or {}
    current = rollout.get("step")
    in_rollout = rollout.get("phase") in ("Progressing", "Paused")
    steps = []
    if kind == "Canary":
        steps = list((strategy.get("canary") or {}).get("steps") or [])
    out = [f"<h2>Rollout: {esc(kind)}</h2>"]
    if kind == "Canary" and in_rollout:
        out.append(
            f'<p class="weight">canary weight <b data-weight>{esc(rollout.get("weight"))}%</b></p>'
        )
    if steps:
        out.append('<ol class="steps">')
        for index, step in enumerate(steps):
            label = _step_label(step)
            state = ""
            if in_rollout and isinstance(current, int):
                state = "done" if index < current else "current" if index == current else ""
            out.append(f'<li class="{state}">{esc(label)}</li>')
        out.append("</ol>")
    return "".join(out)


def _step_label(step: object) -> str:
    if not isinstance(step, Mapping) or not step:
        return str(step)
    key, value = next(iter(step.items()))
    if key == "setWeight":
        return f"weight {value}%"
    if key == "pause":
        duration = value.get("duration") if isinstance(value, Mapping) else None
        return f"pause {duration}" if duration else "pause (until promoted)"
    if key == "analysis":
        return "analysis"
    return f"{key} {json.dumps(value)}"


def _traffic(traffic: object) -> str:
    if not isinstance(traffic, Mapping) or not traffic.get("versions"):
        return ""
    rows = []
    for version in traffic["versions"]:
        rows.append(
            f"<tr><td>{esc(version.get('version'))}</td><td>{esc(version.get('weight'))}%</td>"
            f"<td>{esc(version.get('backends'))}</td><td>{esc(version.get('requests'))}</td>"
            f"<td>{esc(version.get('errors5xx'))}</td><td>{esc(version.get('p99Ms'))}</td></tr>"
        )
    return (
        f"<h2>Traffic ({esc(traffic.get('dataPlane'))})</h2><table><thead><tr><th>Version</th>"
        "<th>Weight</th><th>Backends</th><th>Requests</th><th>5xx</th><th>p99 ms</th></tr>"
        "</thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _analysis(measurements: Sequence[Mapping[str, Any]]) -> str:
    """Each analysis metric's measurements as a small chart (green: passed)."""
    if not measurements:
        return ""
    series: dict[str, list[tuple[float, str]]] = {}
    for m in measurements:
        values = m.get("value") or {}
        for metric, value in values.items() if isinstance(values, Mapping) else ():
            if isinstance(value, int | float) and math.isfinite(value):
                key = f"{m.get('label') or m.get('analysis')}: {metric}"
                series.setdefault(key, []).append((float(value), str(m.get("phase", ""))))
    out = ["<h2>Analysis</h2>"]
    for key, points in series.items():
        out.append(f'<figure class="chart"><figcaption>{esc(key)} (last {esc(points[-1][0])})'
                   f"</figcaption>{_chart(points[-30:])}</figure>")  # fmt: skip
    latest = measurements[-1]
    out.append(
        f"<p>latest: {esc(latest.get('label') or latest.get('analysis'))} "
        f"{esc(latest.get('phase'))} "
        f"{esc(latest.get('message') or '')}</p>"
    )
    return "".join(out)


def _chart(points: Sequence[tuple[float, str]]) -> str:
    width, height = 240, 48
    top = max(v for v, _ in points) or 1.0
    step = width / max(1, len(points))
    bars = []
    for i, (value, phase) in enumerate(points):
        h = max(1.0, height * value / top)
        cls = (
            "pass"
            if phase.lower() in ("successful", "passed", "success")
            else "fail"
            if phase.lower() in ("failed", "error")
            else "other"
        )
        bars.append(
            f'<rect class="{cls}" x="{i * step:.1f}" y="{height - h:.1f}" '
            f'width="{max(1.0, step - 2):.1f}" height="{h:.1f}"><title>{esc(value)} {esc(phase)}</title></rect>'
        )
    return f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">{"".join(bars)}</svg>'


# -- history, plan, audit ------------------------------------------------------------------


#: Forges whose commit pages live at ``https://HOST/OWNER/REPO/commit/SHA``
#: (GitLab's ``/-/commit/`` redirects from there too).
KNOWN_FORGES = ("github.com", "gitlab.com", "codeberg.org", "bitbucket.org", "gitea.com")


def commit_link_base(repo: str | None) -> str | None:
    """``https://HOST/OWNER/REPO`` of a repository on a known forge (credentials dropped),
    else None: a local path or an unknown host gets no link."""
    if not repo:
        return None
    scp = re.fullmatch(r"[\w.-]+@([\w.-]+):([\w./-]+?)(?:\.git)?/?", repo)
    if scp:
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(repo)
        if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path.strip("/").removesuffix(".git")
    if host.lower() not in KNOWN_FORGES or path.count("/") < 1:
        return None
    return f"https://{host.lower()}/{path}"


def history_body(
    revisions: Sequence[Mapping[str, Any]], ctx: PageContext, link_base: str | None = None
) -> str:
    parts = ["<h1>History</h1>"]
    if not revisions:
        parts.append('<p class="muted">no revision recorded yet</p>')
    for rev in revisions:
        result = str(rev.get("result", ""))
        parts.append(
            f'<article class="revision" data-revision="{esc(rev.get("revision"))}">'
            f"<h2>{_commit(rev.get('revision'), link_base)} "
            f'<span class="badge {_result_class(result)}">{esc(result)}</span></h2>'
            f"<p>{esc((rev.get('message') or '').splitlines()[0] if rev.get('message') else '')}</p>"
            f"<p class=meta>by {esc(rev.get('author') or '-')}"
            f"{' · signed by ' + esc(rev.get('signer')) if rev.get('signer') else ' · unsigned'}"
            f" · applied {when(rev.get('appliedAt'))} · {esc(rev.get('trigger') or '')}</p>"
        )
        if rev.get("reason"):
            parts.append(f'<p class="reason">{esc(rev.get("reason"))}</p>')
        for change in rev.get("changes") or []:
            parts.append(_change(change))
        parts.append("</article>")
    return "".join(parts)


def scaling_body(decisions: Sequence[Mapping[str, Any]]) -> str:
    """The scaling decisions under the revisions (``gitorch history --scaling``): when,
    what (a service or ``NodePool/NAME``), which decision and why, newest first."""
    if not decisions:
        return ""
    rows = "".join(
        f'<tr data-kind="{esc(d.get("kind"))}"><td>{when(d.get("at"))}</td>'
        f"<td>{esc(d.get('object') or '-')}</td><td>{esc(d.get('kind'))}</td>"
        f"<td>{esc(d.get('message'))}</td></tr>"
        for d in decisions
    )
    return (
        '<h2>Scaling decisions</h2><table class="scaling"><thead><tr><th>At (UTC)</th>'
        "<th>Object</th><th>Decision</th><th>What and why</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )


def _commit(revision: object, link_base: str | None) -> str:
    if link_base and isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40,64}", revision):
        return (
            f'<a href="{esc(link_base)}/commit/{revision}" rel="noreferrer">{short(revision)}</a>'
        )
    return short(revision)


def dead_replicas(kept: Sequence[Mapping[str, Any]]) -> str:
    """What is left of removed replicas: how each ended and its last lines of output."""
    if not kept:
        return ""
    out = ["<h2>Dead replicas</h2>"]
    for item in kept:
        out.append(
            f'<details class="dead"><summary>{esc(item.get("replica"))} on {esc(item.get("node"))}: '
            f"{esc(item.get('exitReason') or 'exit unknown')}, ended {when(item.get('finishedAt') or item.get('removedAt'))}"
            f" (revision {short(item.get('revision'))})</summary>"
            f"<pre>{esc(item.get('output') or '')}</pre></details>"
        )
    return "".join(out)


def _result_class(result: str) -> str:
    if result in ("succeeded", "no-changes"):
        return "ok"
    if result in ("in-progress",):
        return "busy"
    if result in ("superseded",):
        return "muted"
    return "bad"


def _change(change: Mapping[str, Any]) -> str:
    fate = volume_fate(change)
    head = (
        f'<details class="change" open><summary>{esc(change.get("action"))} '
        f"{esc(change.get('kind'))}/{esc(change.get('name'))}"
        f"{f' <em>({esc(fate)})</em>' if fate else ''}</summary>"
    )
    diff = change.get("diff")
    if isinstance(diff, list) and diff:
        lines = "".join(_diff_line(d) for d in diff)
        return head + f'<table class="diff"><tbody>{lines}</tbody></table></details>'
    fields = change.get("fields") or []
    if fields:
        return (
            head
            + "<ul>"
            + "".join(f"<li><code>{esc(f)}</code></li>" for f in fields)
            + "</ul></details>"
        )
    return head + "</details>"


def _diff_line(item: Mapping[str, Any]) -> str:
    op = str(item.get("op", "change"))
    before, after = _value(item, "before"), _value(item, "after")
    return (
        f'<tr class="{esc(op)}"><td><code>{esc(item.get("path"))}</code></td>'
        f"<td class=before>{before}</td><td class=arrow>→</td><td class=after>{after}</td></tr>"
    )


def _value(item: Mapping[str, Any], side: str) -> str:
    if side not in item or item.get(side) is None and item.get("op") in ("add", "remove"):
        return '<span class="muted">-</span>'
    value = item.get(side)
    if item.get("sensitive") or value in _SENSITIVE_WORDS:
        return '<span class="sensitive">(sensitive value)</span>'
    return f"<code>{esc(json.dumps(value, ensure_ascii=False))}</code>"


def plan_body(plan: Mapping[str, Any], ctx: PageContext, ref: str | None) -> str:
    parts = [
        "<h1>Plan</h1>",
        '<form method="get" action="/plan" class="inline"><label>ref '
        f'<input name="ref" value="{esc(ref or "")}" placeholder="branch head"></label> '
        "<button>Preview</button></form>",
        f"<p>revision {short(plan.get('revision'))} against applied "
        f"{short(plan.get('baseRevision'))}</p>",
    ]
    summary = plan.get("summary") or {}
    parts.append("<p>" + ", ".join(f"{esc(k)} {esc(v)}" for k, v in summary.items()) + "</p>")
    changes = plan.get("changes") or []
    if not changes and not plan.get("actions"):
        parts.append("<p><b>No changes.</b></p>")
    for change in changes:
        parts.append(_change(change))
        steps = (change.get("rollout") or {}).get("steps") or []
        if steps:
            parts.append(
                "<ol class=plan-steps>" + "".join(f"<li>{esc(s)}</li>" for s in steps) + "</ol>"
            )
    placements = plan.get("placements") or []
    if placements:
        parts.append("<h2>Placements</h2><ul>")
        for p in placements:
            parts.append(f"<li>{esc(p.get('replica'))} → {esc(p.get('node'))}</li>")
        parts.append("</ul>")
    for item in plan.get("unschedulable") or []:
        parts.append(f'<div class="error">unschedulable: {esc(json.dumps(item))}</div>')
    for warning in plan.get("warnings") or []:
        parts.append(
            f'<p class="warning">{esc(warning if isinstance(warning, str) else json.dumps(warning))}</p>'
        )
    actions = plan.get("actions") or []
    if actions:
        parts.append("<h2>Actions of the next pass</h2><ul>")
        for a in actions:
            parts.append(
                f"<li>{esc(a.get('action'))} {esc(a.get('replica') or a.get('service') or '')}"
                f"{' on ' + esc(a.get('node')) if a.get('node') else ''}"
                f"{' (' + esc(a.get('reason')) + ')' if a.get('reason') else ''}</li>"
            )
        parts.append("</ul>")
    return "".join(parts)


def events_table(
    events: Sequence[Mapping[str, Any]], *, title: str = "Audit log", with_service: bool = True
) -> str:
    rows = []
    for ev in events:
        rows.append(
            f"<tr><td>{esc(ev.get('id'))}</td><td>{when(ev.get('at'))}</td>"
            f"<td>{esc(ev.get('actor') or '-')}</td><td>{esc(ev.get('kind'))}</td>"
            + (f"<td>{esc(ev.get('service') or '-')}</td>" if with_service else "")
            + f"<td>{esc(ev.get('message'))}</td></tr>"
        )
    head = "<th>#</th><th>At (UTC)</th><th>Actor</th><th>Kind</th>"
    head += "<th>Service</th>" if with_service else ""
    head += "<th>Message</th>"
    if not rows:
        return f'<h2>{esc(title)}</h2><p class="muted">none yet</p>'
    return f"<h2>{esc(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def login_body(message: str, next_path: str) -> str:
    note = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
    return (
        "<h1>Sign in</h1>"
        f"{note}"
        '<form method="post" action="/login" class="login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label>API token <input type="password" name="token" autocomplete="current-password" '
        'required autofocus></label> <button type="submit">Sign in</button></form>'
        '<p class="muted">A token of the daemon\'s <code>--api-token-file</code>: a read token '
        "shows the cluster, a write token also promotes, aborts and drains.</p>"
    )


def confirm_body(question: str, fields: Mapping[str, str]) -> str:
    """The no-JavaScript confirmation of an action: the same form, confirmed."""
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items()
    )
    return (
        f"<h1>Confirm</h1><p>{esc(question)}</p>"
        f'<form method="post" action="/actions">{hidden}'
        '<button type="submit" name="confirmed" value="1">Yes, do it</button></form>'
        f'<p><a href="{esc(fields.get("back", "/"))}">Cancel</a></p>'
    )

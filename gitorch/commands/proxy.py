"""``gitorch proxy``: the data plane as a long-lived process of its own.

``run`` serves (foreground, for systemd; ``--detach`` to background itself), ``restart``
replaces a running proxy with a new one without refusing a connection, ``status`` shows
what serves, ``stop`` stops the data plane of a state directory (the built-in proxy and
the ingresses of remote hosts, a HAProxy kept running by a daemon, or all).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from gitorch.commands.common import (
    add_secrets_option,
    add_state_option,
    secrets_dir_of,
    state_dir,
    stderr,
    stdout,
)
from gitorch.errors import ConfigError
from gitorch.traffic.haproxy.dataplane import STOPPED_FILE
from gitorch.traffic.haproxy.process import HAProxyMaster, process_alive
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call
from gitorch.traffic.proxy.entry import add_run_options, add_serving_options, run

EXAMPLE = """example:
  gitorch proxy run --state /var/lib/gitorch --workers auto     # under systemd
  gitorch proxy run --detach                                    # in the background
  gitorch proxy restart        # a new proxy takes the sockets over (upgrades)
  gitorch proxy status
  gitorch proxy stop           # stops serving every endpoint of this state directory
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="the data plane as its own long-lived process: run, restart, status, stop",
        description="The built-in load balancer runs as `gitorch proxy`, a process of its own "
        "that keeps serving the last routing table while no daemon runs. `gitorch daemon` "
        "starts one when none runs and re-adopts a running one; it never stops it. Stopping "
        "the data plane is explicit: `gitorch proxy stop`.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    run_parser = actions.add_parser("run", help="serve (foreground unless --detach)")
    add_run_options(run_parser)
    run_parser.set_defaults(run=run)

    restart_parser = actions.add_parser(
        "restart",
        help="replace the running proxy by a new one (its listening sockets are handed over)",
    )
    add_state_option(restart_parser)
    add_serving_options(restart_parser, defaults_from_running=True)
    restart_parser.set_defaults(run=restart)

    status_parser = actions.add_parser("status", help="what serves this state directory")
    add_state_option(status_parser)
    status_parser.set_defaults(run=status)

    stop_parser = actions.add_parser(
        "stop", help="stop the data plane of this state directory (endpoints go down)"
    )
    add_state_option(stop_parser)
    add_secrets_option(stop_parser)
    stop_parser.add_argument(
        "--data-plane",
        choices=("all", "builtin", "haproxy"),
        default="all",
        help="which to stop: the built-in proxy (and remote hosts' ingresses), HAProxy, or "
        "whichever runs (default all)",
    )
    stop_parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the proxy to drain and exit (default 60)",
    )
    stop_parser.set_defaults(run=stop)


def restart(args: argparse.Namespace) -> int:
    from gitorch.traffic.proxy.client import launch

    state = state_dir(args).resolve()
    paths = ProxyPaths.of(state)
    try:
        hello = call(paths.socket, {"op": "hello"}, 10.0)
    except ProxyUnavailable as exc:
        raise ConfigError(f"no proxy runs for {state}: start one with `gitorch proxy run`") from exc
    host = args.host or str(hello.get("host", "127.0.0.1"))
    workers = args.workers or int(hello.get("workers", 1))
    event_loop = args.event_loop or hello.get("eventLoop")
    launch(state, host=host, workers=workers, event_loop=event_loop)
    new = call(paths.socket, {"op": "hello"}, 10.0)
    stdout().print(
        f"proxy {new.get('pid')} (gitorch {escape(str(new.get('version')))}) took over from "
        f"proxy {hello.get('pid')}, which drains and exits"
    )
    return 0


def status(args: argparse.Namespace) -> int:
    state = state_dir(args).resolve()
    out = stdout()
    paths = ProxyPaths.of(state)
    try:
        hello = call(paths.socket, {"op": "hello"}, 10.0)
        health = call(paths.socket, {"op": "health"}, 10.0)
        out.print(
            f"built-in proxy: pid {hello.get('pid')} "
            f"({'socket keeper ' + str(hello['keeper']) if hello.get('keeper') else 'no socket keeper'}), "
            f"gitorch {escape(str(hello.get('version')))}, "
            f"{hello.get('workers')} workers on {escape(str(hello.get('host')))}, "
            f"{health.get('routes')} routes, up {_ago(hello.get('startedAt'))}, "
            f"{'serving' if health.get('ok') else escape(str(health.get('message')))}"
        )
    except ProxyUnavailable:
        out.print("built-in proxy: not running")
    master = HAProxyMaster(state / "haproxy")
    if master.adopt():
        out.print(f"haproxy: master pid {master.pid}, serving")
    else:
        out.print("haproxy: not running")
    return 0


def stop(args: argparse.Namespace) -> int:
    state = state_dir(args).resolve()
    out = stdout()
    code = 0
    if args.data_plane in ("all", "builtin"):
        out.print(_stop_proxy(ProxyPaths.of(state), args.timeout))
        code = _stop_ingresses(args, state)
    if args.data_plane in ("all", "haproxy"):
        master = HAProxyMaster(state / "haproxy")
        if master.adopt():
            pid = master.pid
            (state / "haproxy" / STOPPED_FILE).touch()  # a running daemon must not restart it
            master.stop()
            out.print(f"haproxy {pid} stopped")
        else:
            out.print("haproxy: not running")
    return code


def _stop_ingresses(args: argparse.Namespace, state: Path) -> int:
    """Remove the ingresses of the remote hosts of ``state``'s cluster (the applied Nodes,
    reached with the daemon's secrets directory or ``--secrets-dir``); 1 if one of them
    could not be, saying which."""
    # Here, not at the top: `gitorch proxy run` must not load the reconciler's packages.
    from gitorch.apply.ingress import stop_ingresses
    from gitorch.live.inventory import existing_cluster_name, open_runtimes
    from gitorch.readmodel.cluster import registered_targets
    from gitorch.state import StateStore
    from gitorch.state.layout import STATE_DB
    from gitorch.state.moved import moved_to

    cluster = existing_cluster_name(state)
    if cluster is None or not (state / STATE_DB).exists():
        return 0
    # The runtime dir of etcd daemons: the nodes are in the state it moved to.
    store = StateStore(moved_to(state) or state, readonly=True)
    try:
        targets = [t for t in registered_targets(store, None) if t.own_ingress]
    finally:
        store.close()
    if not targets:
        return 0
    runtimes = open_runtimes(targets, state, secrets_dir=secrets_dir_of(args))
    lines, ok = stop_ingresses(runtimes, cluster)
    for line in lines:
        (stdout() if ok else stderr()).print(escape(line))
    return 0 if ok else 1


def _stop_proxy(paths: ProxyPaths, timeout: float) -> str:
    if paths.root.is_dir():
        paths.stopped.touch()  # a running daemon must not start it again
    try:
        hello = call(paths.socket, {"op": "hello"}, 10.0)
        call(paths.socket, {"op": "stop"}, 10.0)
    except ProxyUnavailable:
        return "built-in proxy: not running"
    pid = int(hello.get("pid", 0))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.1)
    if process_alive(pid):
        raise ConfigError(f"proxy {pid} did not exit within {timeout:g} s (still draining?)")
    return f"built-in proxy {pid} stopped"


def _ago(started: Any) -> str:
    if not isinstance(started, int | float):
        return "?"
    seconds = max(0, int(time.time() - started))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"

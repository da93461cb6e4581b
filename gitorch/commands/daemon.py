"""``gitorch daemon``: reconcile forever from Git, self-heal, serve the API."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from gitorch.api.auth import TokenSet, check_exposure
from gitorch.api.server import parse_listen
from gitorch.api.tls import TlsFiles, server_context
from gitorch.api.webhook import WebhookSecret
from gitorch.commands.apply import add_mass_prune_option, add_session_options, session_options
from gitorch.commands.common import (
    add_source_options,
    add_verify_options,
    positive_duration,
    signature_policy,
)
from gitorch.daemon import Daemon, DaemonOptions
from gitorch.errors import ConfigError
from gitorch.live.inventory import local_node_name
from gitorch.logs import setup_logging
from gitorch.process_limits import raise_open_files_limit


class _GivenDuration(argparse.Action):
    """Stores the value and notes that the option was given (``<dest>_given``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


EXAMPLE = """example:
  gitorch daemon --path examples/repo --runtime process
  gitorch daemon --repo https://git.example.com/shop/deploy.git --ref main --interval 1m \\
      --webhook-secret-file /etc/gitorch/webhook-secret --log-format json
  gitorch daemon --listen 0.0.0.0:7420 --api-token-file /etc/gitorch/api-tokens \\
      --tls-cert /etc/gitorch/api.crt --tls-key /etc/gitorch/api.key
  # several daemons, one leader (run the same on each host, each with its own --name):
  gitorch daemon --state etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/shop --name a
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="the reconciler: poll Git, react to webhooks and local commits, self-heal, serve the API",
        description="Reconcile the cluster to the newest valid commit of --ref, forever. Polls the "
        "source every --interval, reacts at once to commits in a local checkout and to "
        "signed webhooks, replaces replicas that die, rolls back failed rollouts, and serves the "
        "HTTP API (status, history, plan, metrics, webhook) on --listen. SIGTERM/SIGINT stop it "
        "cleanly; running replicas keep running and are re-adopted on the next start.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_options(parser)
    add_verify_options(parser)
    add_session_options(parser, lb_workers="auto")
    parser.add_argument(
        "--interval",
        type=positive_duration,
        default=30.0,
        metavar="DURATION",
        help="time between fetches of the source (30s, 1m, 500ms, 1m30s or seconds; default 30s)",
    )
    parser.add_argument(
        "--resync",
        type=positive_duration,
        default=2.0,
        action=_GivenDuration,
        metavar="DURATION",
        help="time between reconcile passes when nothing happens (self-heal; default 2s, "
        "stretched while passes that change nothing would take over 2%% of a core; a "
        "--resync given is kept)",
    )
    parser.add_argument(
        "--autoscale-sync",
        type=positive_duration,
        default=15.0,
        metavar="DURATION",
        help="time between readings of autoscaled services' metrics and scaling decisions, "
        "and between NodePools' syncs (default 15s, as Kubernetes' HPA)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:7420", help="HTTP API address (default 127.0.0.1:7420)"
    )
    parser.add_argument(
        "--webhook-secret-file",
        default=None,
        help="file holding the HMAC secret of push webhooks (without it webhooks are refused)",
    )
    parser.add_argument(
        "--api-token-file",
        default=None,
        metavar="PATH",
        help="require 'Authorization: Bearer TOKEN' on the API (all but /healthz and the "
        "webhook); one token per line: TOKEN, ROLE:TOKEN or NAME:ROLE:TOKEN, ROLE read or "
        "write (default write); mode 600 (see docs/cli-api.md)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="FILE",
        help="serve the API over HTTPS with this certificate chain (PEM); with --tls-key",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the private key (PEM, mode 600) of --tls-cert",
    )
    parser.add_argument(
        "--api-insecure",
        action="store_true",
        help="serve the API on a non-loopback --listen address without tokens or without "
        "TLS (anyone who reaches it can read status and abort rollouts, or read tokens on "
        "the wire); refused otherwise",
    )
    add_mass_prune_option(parser)
    parser.add_argument(
        "--name",
        default=None,
        help="this daemon's name among several on one etcd state (default: the host name); "
        "each daemon of a cluster needs its own",
    )
    parser.add_argument(
        "--lease-ttl",
        type=positive_duration,
        default=5.0,
        metavar="DURATION",
        help="with etcd state: how long a leader that stops answering keeps the leadership "
        "(the lease's TTL, renewed every sixth of it; at least 2s; default 5s)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="json: one JSON object per line",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.worktree:
        raise ConfigError("the daemon applies commits, never uncommitted files (drop --worktree)")
    # Everything gitorch writes from here on (state, logs, caches) is private; replicas
    # get the usual umask back (runtime/process.py).
    os.umask(0o077)
    setup_logging(args.log_level, args.log_format)
    raise_open_files_limit()  # a pidfd per replica, the proxy's connections
    policy = signature_policy(args)
    secret = WebhookSecret.from_file(args.webhook_secret_file) if args.webhook_secret_file else None
    tokens = TokenSet.from_file(args.api_token_file) if args.api_token_file else None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both, or neither")
    tls = server_context(TlsFiles(args.tls_cert, args.tls_key)) if args.tls_cert else None
    # Refuse an open, exposed API before opening the state store or any runtime.
    check_exposure(parse_listen(args.listen)[0], tokens, args.api_insecure, tls=tls is not None)
    options = DaemonOptions(
        repo=args.repo,
        ref=args.ref,
        path=args.path,
        # A daemon's name defaults to the host's (apply's to a name of its own per run).
        session=replace(session_options(args), name=args.name or local_node_name()),
        interval=args.interval,
        resync=args.resync,
        # Not given: the default, which the idle budget may stretch.
        resync_fixed=getattr(args, "resync_given", False),
        autoscale_sync=args.autoscale_sync,
        listen=args.listen,
        webhook_secret=secret,
        api_tokens=tokens,
        api_insecure=args.api_insecure,
        api_tls=tls,
        allow_mass_prune=args.allow_mass_prune,
        signature_policy=policy,
    )
    Daemon(options).run()
    return 0

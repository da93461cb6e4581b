"""``gitorch promote SERVICE`` / ``gitorch abort SERVICE``: move a paused rollout on, or stop it.

Promote moves a progressive rollout past its current pause (or an inconclusive analysis,
or a blue-green switch waiting for approval). Abort sets the new version's weight to 0 at
once and rolls back to the last good revision. Both are picked up by the next reconcile
pass of the running daemon. Exit 1 when the service has no rollout to act on.
"""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.error
import urllib.request

from rich.markup import escape

from gitorch.commands.common import (
    add_state_option,
    has_state,
    local_actor,
    looked_in,
    state_location,
    stdout,
)
from gitorch.commands.remote import (
    add_token_option,
    auth_error,
    auth_headers,
    client_tls,
    client_token,
    unreachable,
)
from gitorch.errors import GitorchError
from gitorch.state import StateStore
from gitorch.state.requests import request_action


def register(subparsers: argparse._SubParsersAction) -> None:
    for what, help_text in (
        ("promote", "move a paused rollout on to its next step"),
        ("abort", "abort a rollout: new version's weight to 0 at once, roll back"),
    ):
        parser = subparsers.add_parser(
            what,
            help=help_text,
            description=__doc__,
            epilog=f"example:\n  gitorch {what} web\n  gitorch {what} web --server "
            f"http://127.0.0.1:7420 --token-file ~/.config/gitorch/token\n",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("service")
        add_state_option(parser)
        parser.add_argument(
            "--server", default=None, metavar="URL", help="ask a running daemon instead of --state"
        )
        add_token_option(parser)
        parser.set_defaults(run=run, what=what)


def run(args: argparse.Namespace) -> int:
    if args.server:
        return _remote(args.server, args.what, args.service, client_token(args), client_tls(args))
    location = state_location(args)
    if not has_state(location):
        raise GitorchError(
            f"no state store {looked_in(location, None)}: nothing has been applied there yet"
        )
    with StateStore(location) as store:
        accepted, message = request_action(store, args.service, args.what, local_actor())
    stdout().print(escape(message))
    return 0 if accepted else 1


def _remote(
    server: str,
    what: str,
    service: str,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> int:
    url = f"{server.rstrip('/')}/api/v1/services/{service}/{what}"
    headers = {"Content-Type": "application/json", **auth_headers(token)}
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - operator's URL
            body = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(detail).get("error", detail)
        except ValueError:
            message = detail
        if exc.code == 409:
            stdout().print(message)
            return 1
        refused = auth_error(exc.code, server, str(message), token)
        if refused is not None:
            raise refused from exc
        raise GitorchError(f"{server}: {message}") from exc
    except urllib.error.URLError as exc:
        raise unreachable(server, exc.reason) from exc
    except OSError as exc:
        raise unreachable(server, exc) from exc
    stdout().print(body.get("message", f"{what} of {service} requested"))
    return 0

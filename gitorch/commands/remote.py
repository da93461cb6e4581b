"""The client side of the daemon's API auth, shared by the ``--server`` commands.

``--token-file PATH`` (or, without it, the ``GITORCH_TOKEN`` environment variable) gives
the bearer token sent as ``Authorization: Bearer TOKEN``. The file may be a copy of the
daemon's own line (``NAME:ROLE:TOKEN``) or hold the bare token: the first line that is
not blank or a ``#`` comment is read and its last ``:``-separated field is the token.
Like the daemon's token file, it must not be readable by others.

A 401 or 403 from the daemon becomes one clear :class:`ApiAuthError` line (exit 1) that
says what to do, and never shows the token.

``--server https://...`` checks the daemon's certificate against the system's trusted CAs,
or only against ``--ca-file PEM`` (or ``$GITORCH_CA_FILE``) when given: a daemon whose
certificate comes from a private CA. The host name is always checked.
"""

from __future__ import annotations

import argparse
import os
import ssl
from pathlib import Path

from gitorch.errors import ConfigError, GitorchError

#: The environment variable read when no --token-file is given.
TOKEN_ENV = "GITORCH_TOKEN"

#: The environment variable read when no --ca-file is given.
CA_ENV = "GITORCH_CA_FILE"


class ApiAuthError(GitorchError):
    """The daemon refused the request: no token, a wrong token (401), or a role too low (403)."""


def add_token_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--token-file PATH``: the API token for ``--server`` (default: $GITORCH_TOKEN)."""
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help=f"file holding the daemon's API token, for --server (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        metavar="PEM",
        help="CA certificate(s) that signed the daemon's TLS certificate, for --server "
        f"https://... (default: ${CA_ENV}, else the system's trusted CAs)",
    )


def client_token(args: argparse.Namespace) -> str | None:
    """The token to send: from ``--token-file``, else ``$GITORCH_TOKEN``, else None."""
    path = getattr(args, "token_file", None)
    if path:
        if not getattr(args, "server", None):
            raise ConfigError("--token-file is only used with --server")
        return read_token_file(path)
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of an ``https://`` --server (None for plain HTTP)."""
    server = getattr(args, "server", None) or ""
    ca_file = getattr(args, "ca_file", None) or os.environ.get(CA_ENV, "").strip() or None
    if not server.startswith("https://"):
        if getattr(args, "ca_file", None):
            raise ConfigError("--ca-file is only used with --server https://...")
        return None
    from gitorch.api.tls import client_context

    return client_context(ca_file)


def unreachable(server: str, reason: object) -> GitorchError:
    """The one-line error of a daemon that could not be reached (or not trusted)."""
    if isinstance(reason, ssl.SSLCertVerificationError):
        return GitorchError(
            f"the daemon at {server} is not trusted: {reason.verify_message}",
            detail=(f"give its CA with --ca-file PEM (or ${CA_ENV})",),
        )
    if isinstance(reason, ssl.SSLError):
        return GitorchError(f"no TLS connection to the daemon at {server}: {reason}")
    return GitorchError(f"cannot reach the gitorch daemon at {server}: {reason}")


def read_token_file(path: str | Path) -> str:
    """The token in a client token file (see the module docstring)."""
    from gitorch.api.auth import read_private_file  # the API's modules load only here

    text = read_private_file(path, what="token file")
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            token = line.rsplit(":", 1)[-1].strip()
            if token:
                return token
            break
    raise ConfigError(f"the token file {path} holds no token")


def auth_headers(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_error(code: int, server: str, message: str, token: str | None) -> ApiAuthError | None:
    """The one-line error of a 401/403 answer (``message``: the daemon's), else None."""
    if code == 401:
        if token is None:
            return ApiAuthError(
                f"the daemon at {server} requires an API token: "
                f"pass --token-file FILE or set {TOKEN_ENV}"
            )
        return ApiAuthError(
            f"the daemon at {server} rejected the API token ({message}): "
            f"check --token-file or {TOKEN_ENV}"
        )
    if code == 403:
        return ApiAuthError(f"the daemon at {server} refused the request: {message}")
    return None

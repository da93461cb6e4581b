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
import json
import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from gitorch.errors import ConfigError, GitorchError

#: The environment variable read when no --token-file is given.
TOKEN_ENV = "GITORCH_TOKEN"

#: The environment variable read when no --ca-file is given.
CA_ENV = "GITORCH_CA_FILE"

#: Seconds to wait for a daemon's answer.
SERVER_TIMEOUT = 10.0


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


def server_url(server: str) -> str:
    """``--server`` checked (``http(s)://HOST[:PORT]``), without a trailing slash."""
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"invalid --server URL {server!r}: expected http://HOST:PORT")
    return server.rstrip("/")


@contextmanager
def opened(
    url: str,
    server: str,
    timeout: float = SERVER_TIMEOUT,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    accept: str = "application/json",
    post: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """The daemon's open answer to ``url``: GET (``post``: POST it as JSON) with ``token``
    as a bearer token, over TLS with ``context`` for an https URL; read it whole or as it
    comes. Every failure is one clear GitorchError, with the lines of the daemon's
    ``detail`` (a manifest's problems, each ``path:line:col``)."""
    import urllib.error  # ~20 ms of imports, for the commands that ask a daemon alone
    import urllib.request

    headers = {"Accept": accept, **auth_headers(token)}
    data = None
    if post is not None:
        data = json.dumps(post).encode("utf-8")
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as exc:
        message, detail = _error_of(exc.read())
        refused = auth_error(exc.code, server, message or str(exc.reason), token)
        if refused is not None:
            raise refused from exc
        raise GitorchError(
            f"the daemon at {server} answered {exc.code}: {message or exc.reason}", detail=detail
        ) from exc
    except urllib.error.URLError as exc:
        raise unreachable(server, exc.reason) from exc
    except (OSError, TimeoutError) as exc:
        raise unreachable(server, exc) from exc
    with response:
        yield response


def _read(response: Any, server: str) -> bytes:
    try:
        return bytes(response.read())
    except (OSError, TimeoutError) as exc:  # the daemon went away mid-answer
        raise unreachable(server, exc) from exc


def ask_lines(args: argparse.Namespace, path: str, quiet: float) -> Iterator[Any]:
    """The newline-delimited JSON the daemon ``--server`` names streams at ``path``, one
    decoded value a line as it comes (blank keep-alive lines skipped). A daemon silent for
    longer than ``quiet`` seconds, or gone, ends it with an error."""
    with _asked(args, path, quiet, accept="application/x-ndjson") as response:
        while True:
            try:
                line = response.readline()
            except (OSError, TimeoutError) as exc:
                raise unreachable(args.server, exc) from exc
            if not line:
                raise GitorchError(f"the daemon at {args.server} ended the stream")
            if line.strip():
                yield _decoded(line, args.server)


def fetch_json(
    url: str,
    server: str,
    timeout: float = SERVER_TIMEOUT,
    *,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> Any:
    """``url``'s JSON (see :func:`opened`)."""
    with opened(url, server, timeout, token=token, context=context) as response:
        return _decoded(_read(response, server), server)


def ask(
    args: argparse.Namespace,
    path: str,
    timeout: float = SERVER_TIMEOUT,
    *,
    accept: str = "application/json",
    post: Mapping[str, Any] | None = None,
) -> tuple[bytes, Mapping[str, str]]:
    """``path`` of the daemon ``--server`` names (see :func:`opened`), with
    ``--token-file`` and ``--ca-file``: the body and the headers."""
    with _asked(args, path, timeout, accept=accept, post=post) as response:
        return _read(response, args.server), response.headers


def _asked(
    args: argparse.Namespace,
    path: str,
    timeout: float,
    *,
    accept: str,
    post: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """:func:`opened` for ``path`` of the daemon ``--server`` names, with
    ``--token-file`` and ``--ca-file``."""
    return opened(
        f"{server_url(args.server)}{path}",
        args.server,
        timeout,
        token=client_token(args),
        context=client_tls(args),
        accept=accept,
        post=post,
    )


def ask_message(args: argparse.Namespace, path: str) -> str | None:
    """POST ``path`` of the daemon ``--server`` names (an action: drain, reset...) and
    the ``message`` of its answer (None when it has none)."""
    body, _headers = ask(args, path, post={})
    try:
        data = json.loads(body)
    except ValueError:
        return None
    message = data.get("message") if isinstance(data, dict) else None
    return str(message) if message is not None else None


def ask_json(args: argparse.Namespace, path: str, timeout: float = SERVER_TIMEOUT) -> Any:
    """:func:`ask` ``path`` and decode its JSON."""
    body, _headers = ask(args, path, timeout)
    return _decoded(body, args.server)


def _decoded(body: bytes, server: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise GitorchError(f"the daemon at {server} did not answer JSON") from exc


def _error_of(body: bytes) -> tuple[str | None, tuple[str, ...]]:
    """The ``error`` and ``detail`` lines of an API error document."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, ()
    if not isinstance(data, dict) or "error" not in data:
        return None, ()
    detail = data.get("detail")
    lines = tuple(str(line) for line in detail) if isinstance(detail, list) else ()
    return str(data["error"]), lines


def fetch_rows(args: argparse.Namespace, path: str, key: str) -> list[dict[str, Any]]:
    """The list under ``key`` of the JSON document at ``path`` of the daemon ``--server``
    names (with ``--token-file`` and ``--ca-file``)."""
    data = ask_json(args, path)
    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise GitorchError(f"the daemon at {args.server} answered {path} without its {key}")
    return rows

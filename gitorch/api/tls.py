"""TLS for the daemon's API (``--tls-cert FILE --tls-key FILE``).

The API is a standard-library ``ThreadingHTTPServer``; TLS is the standard library's
:mod:`ssl` (OpenSSL): no extra dependency. The server context speaks TLS 1.2 and newer
with Python's default (OpenSSL's secure) cipher choice; the handshake runs on the
connection's own thread (:func:`handshake`), so a client that connects and stays silent
holds one thread for at most the request timeout, never the accept loop.

The key file is a secret: like ssh with a private key (and the API token file), the
daemon refuses one that others may read or its group may write. Certificates are public.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from gitorch.api.auth import read_private_file
from gitorch.errors import ConfigError


class TlsConfigError(ConfigError):
    """The API's certificate or key cannot be used (missing, unsafe, not a matching pair)."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the API's certificate chain (PEM) and private key (PEM) are."""

    cert: Path
    key: Path


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The server-side context for ``files``; every problem is one TlsConfigError line."""
    # Refused like the API token file when others may read it (the text is not kept).
    read_private_file(files.key, what="TLS private key (--tls-key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except FileNotFoundError as exc:
        raise TlsConfigError(f"cannot read {exc.filename}: no such file") from exc
    except ssl.SSLError as exc:  # before OSError, its base class
        raise TlsConfigError(
            f"--tls-cert {files.cert} and --tls-key {files.key} cannot be used: "
            f"{exc.reason or exc} (both PEM, the key matching the certificate)"
        ) from exc
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read --tls-cert {files.cert} / --tls-key {files.key}: {exc.strerror or exc}"
        ) from exc
    return context


def handshake(context: ssl.SSLContext, conn: socket.socket, timeout: float) -> ssl.SSLSocket:
    """Wrap an accepted connection and finish the server handshake within ``timeout``;
    raises OSError (ssl.SSLError included) when the client does not speak TLS in time."""
    conn.settimeout(timeout)
    wrapped = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    wrapped.do_handshake()
    return wrapped


def client_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """The client side of ``--server https://...``: the system's trusted CAs, or only
    ``ca_file`` (PEM) when given (a private CA); the host name is always checked."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except FileNotFoundError as exc:
        raise TlsConfigError(f"--ca-file {ca_file}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"--ca-file {ca_file} cannot be used: {exc}") from exc

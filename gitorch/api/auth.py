"""Bearer-token authentication of the daemon's HTTP API (``--api-token-file``).

The token file holds one token per line; blank lines and lines starting with ``#`` are
ignored. A line is one of::

    TOKEN                 role write, named "line-N" (N: its line number)
    ROLE:TOKEN            ROLE is read or write, named "line-N"
    NAME:ROLE:TOKEN       NAME appears in the audit log and the daemon's log

``TOKEN`` is 16 to 512 characters of ``A-Z a-z 0-9 - . _ ~ + / =`` (RFC 6750's
``b64token``, so no ``:``), e.g. ``openssl rand -hex 32``. ``NAME`` is 1 to 64 characters
of ``A-Z a-z 0-9 - . _ @``. Names and tokens must be unique. Like ssh with a private key,
the daemon refuses a file that others may read or that its group may write (fix: ``chmod
600 FILE``).

Roles: ``read`` may call every ``GET`` endpoint and ``/metrics``; ``write`` may also
``POST`` reconcile, promote, abort, drain and a volume reset. ``/healthz`` and the webhook
(which has its HMAC) need no token.

Checks: a request presents ``Authorization: Bearer TOKEN``. The presented token is
hashed (SHA-256) and compared with the digest of *every* configured token with
:func:`hmac.compare_digest`, without stopping at a match, so neither the time taken nor
an early exit tells which token or how many characters were right. Only the digests are
kept in memory; token values never appear in a repr, a log line or an error message (a
malformed line is reported by its number, not its content).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitorch.errors import ConfigError


class TokenFileError(ConfigError):
    """The API token file cannot be read, is unsafe, or holds a malformed line."""


class ExposedApiError(ConfigError):
    """The API would listen beyond loopback without a token file or without TLS, and no
    ``--api-insecure`` was given."""


class Role(enum.IntEnum):
    """What a token may do; a higher role includes the lower ones."""

    READ = 1
    WRITE = 2

    def __str__(self) -> str:
        return self.name.lower()


_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/=]{16,512}$")
_NAME = re.compile(r"^[A-Za-z0-9\-._@]{1,64}$")
_ROLES = {"read": Role.READ, "write": Role.WRITE}

#: Mode bits that make a token file unsafe: anything for others, or group write.
_UNSAFE_MODE = stat.S_IRWXO | stat.S_IWGRP


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class ApiToken:
    """One configured token: its name, role, and the SHA-256 of its value (never the value)."""

    name: str
    role: Role
    digest: bytes = field(repr=False)


@dataclass(frozen=True)
class TokenSet:
    """The tokens the API accepts."""

    tokens: tuple[ApiToken, ...]

    def __post_init__(self) -> None:
        if not self.tokens:
            raise TokenFileError("no API token configured")

    @classmethod
    def from_lines(cls, lines: Iterable[str], *, source: str = "the API token file") -> TokenSet:
        """Parse token-file lines (see the module docstring); errors name line numbers only."""
        tokens: list[ApiToken] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            token = _parse_line(line, number, source)
            if token.name in names:
                raise TokenFileError(
                    f"{source} line {number}: the name {token.name!r} is used twice"
                )
            if token.digest in digests:
                raise TokenFileError(f"{source} line {number}: this token is listed twice")
            names.add(token.name)
            digests.add(token.digest)
            tokens.append(token)
        if not tokens:
            raise TokenFileError(f"{source} holds no token")
        return cls(tuple(tokens))

    @classmethod
    def from_file(cls, path: str | Path) -> TokenSet:
        """Read ``path``; refuse it when it is not a regular file or others may read it."""
        text = read_private_file(path, what="API token file")
        return cls.from_lines(text.splitlines(), source=f"the API token file {path}")

    def match(self, presented: str) -> ApiToken | None:
        """The token whose value is ``presented`` (constant time over all tokens), or None."""
        wanted = _digest(presented.encode("utf-8", "surrogateescape"))
        found: ApiToken | None = None
        for token in self.tokens:
            # No early exit: every digest is compared whatever matched before.
            if hmac.compare_digest(token.digest, wanted):
                found = token
        return found


def _parse_line(line: str, number: int, source: str) -> ApiToken:
    fields = [part.strip() for part in line.split(":")]
    if len(fields) > 3:
        raise TokenFileError(
            f"{source} line {number}: expected TOKEN, ROLE:TOKEN or NAME:ROLE:TOKEN"
        )
    value = fields[-1]
    name = f"line-{number}"
    role = Role.WRITE
    if len(fields) == 3:
        name = fields[0]
        if not _NAME.match(name):
            raise TokenFileError(
                f"{source} line {number}: a token name is 1-64 characters of A-Z a-z 0-9 - . _ @"
            )
    if len(fields) >= 2:
        role_text = fields[-2].lower()
        if role_text not in _ROLES:
            raise TokenFileError(
                f"{source} line {number}: the role must be read or write, not {fields[-2]!r}"
            )
        role = _ROLES[role_text]
    if not _TOKEN.match(value):
        # Never quote the value: it may be a real token with one bad character.
        raise TokenFileError(
            f"{source} line {number}: a token is 16-512 characters of A-Z a-z 0-9 - . _ ~ + / ="
        )
    return ApiToken(name, role, _digest(value.encode("ascii")))


def read_private_file(path: str | Path, *, what: str) -> str:
    """The text of ``path``, refused (TokenFileError) when others may read it or the group
    may write it, as ssh refuses a private key; the mode is checked on the opened file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"the {what} {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & _UNSAFE_MODE:
            raise TokenFileError(
                f"the {what} {path} is accessible by others (mode {mode:04o}); "
                f"it holds secrets: run `chmod 600 {path}`"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise TokenFileError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"the {what} {path} is not UTF-8 text") from exc


# -- authorization of one request --------------------------------------------------------


#: Routes that need no token: liveness, and the webhook (verified by its own HMAC).
OPEN_ROUTES = frozenset({"/healthz", "/api/v1/webhook"})


@dataclass(frozen=True)
class Denial:
    """Why a request is refused: the status (401/403), a message, its WWW-Authenticate."""

    status: int
    message: str
    challenge: str


@dataclass(frozen=True)
class Grant:
    """A request allowed through; ``principal`` is the token's name (None: no auth)."""

    principal: str | None


def required_role(method: str, route: str) -> Role | None:
    """The role a request needs: None for open routes, write for POST, read otherwise."""
    if route in OPEN_ROUTES:
        return None
    return Role.WRITE if method == "POST" else Role.READ


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (lower-case names), or None."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


_REALM = 'Bearer realm="gitorch"'


def authorize(
    tokens: TokenSet | None,
    method: str,
    route: str,
    headers: Mapping[str, str],
    *,
    path: str | None = None,
) -> Grant | Denial:
    """Decide one request to ``route`` (``path``: the requested path, for messages).
    Without ``tokens`` (no --api-token-file) everything is allowed."""
    needed = required_role(method, route)
    if tokens is None or needed is None:
        return Grant(None)
    presented = bearer_token(headers)
    if presented is None:
        return Denial(
            401,
            "authentication required: send Authorization: Bearer TOKEN",
            _REALM,
        )
    token = tokens.match(presented)
    if token is None:
        return Denial(401, "invalid API token", f'{_REALM}, error="invalid_token"')
    if token.role < needed:
        return Denial(
            403,
            f"token {token.name!r} has the {token.role} role; "
            f"{method} {path or route} needs the {needed} role",
            f'{_REALM}, error="insufficient_scope", scope="{needed}"',
        )
    return Grant(token.name)


# -- where the API may listen without tokens ---------------------------------------------


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(
    host: str, tokens: TokenSet | None, insecure: bool, *, tls: bool = False
) -> None:
    """Refuse to serve the API beyond loopback without authentication or without TLS
    (tokens would cross the network in clear) unless told so explicitly (``insecure``)."""
    if insecure or is_loopback(host):
        return
    if tokens is None:
        raise ExposedApiError(
            f"refusing to serve the API on {host} without authentication: anyone who can reach "
            "it could abort rollouts and read status",
            detail=(
                "give --api-token-file FILE and --tls-cert/--tls-key (see docs/cli-api.md),",
                "or listen on 127.0.0.1, or pass --api-insecure to accept an open API",
            ),
        )
    if not tls:
        raise ExposedApiError(
            f"refusing to serve the API on {host} without TLS: its bearer tokens would cross "
            "the network in clear",
            detail=(
                "give --tls-cert FILE --tls-key FILE (see docs/cli-api.md),",
                "or listen on 127.0.0.1, or pass --api-insecure to accept plain HTTP",
            ),
        )

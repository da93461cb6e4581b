"""Who is looking at the dashboard, and whether a form really came from it.

Credentials are the API's tokens (:mod:`gitorch.api.auth`): a browser signs in once with a
token on the login form and carries it in an ``HttpOnly; SameSite=Strict`` cookie (plus
``Secure`` over TLS), so page scripts never see it; scripts and curl may send the usual
``Authorization: Bearer`` header instead. Without ``--api-token-file`` (a loopback-only
daemon) everyone may read and act, as with the API.

Every form that changes something carries a CSRF token: an HMAC, under a key the daemon
draws at start, of the viewer's credential digest. A forged form from another site has no
way to compute it (and SameSite=Strict keeps the cookie off cross-site requests besides).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from gitorch.api.auth import Role, TokenSet, bearer_token

#: The cookie that carries the token of a signed-in browser.
COOKIE = "gitorch_token"


@dataclass(frozen=True)
class Viewer:
    """Who asks: ``name`` is the token's name (None without tokens configured), ``role``
    what it may do (None: not signed in), ``credential`` the presented token's digest."""

    name: str | None
    role: Role | None
    credential: bytes

    @property
    def can_read(self) -> bool:
        return self.role is not None

    @property
    def can_write(self) -> bool:
        return self.role is Role.WRITE

    @property
    def actor(self) -> str | None:
        """The name the audit log records for this viewer's actions."""
        return self.name


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token of the Authorization header, else of the dashboard cookie."""
    token = bearer_token(headers)
    if token is not None:
        return token
    raw = headers.get("cookie")
    if not raw:
        return None
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class Guard:
    """Identifies viewers and signs and checks the CSRF tokens of their forms."""

    def __init__(self, tokens: TokenSet | None, *, key: bytes | None = None) -> None:
        self.tokens = tokens
        self._key = key or os.urandom(32)

    @property
    def open(self) -> bool:
        """True when no tokens are configured: everyone reads and acts."""
        return self.tokens is None

    def viewer(self, headers: Mapping[str, str]) -> Viewer:
        presented = presented_token(headers)
        credential = hashlib.sha256((presented or "").encode()).digest()
        if self.tokens is None:
            return Viewer(None, Role.WRITE, credential)
        if presented is None:
            return Viewer(None, None, credential)
        token = self.tokens.match(presented)
        if token is None:
            return Viewer(None, None, credential)
        return Viewer(token.name, token.role, credential)

    def check_token(self, presented: str) -> Viewer | None:
        """The viewer a token on the login form makes (None: no such token)."""
        return self.viewer({"authorization": f"Bearer {presented}"}) if presented else None

    def csrf(self, viewer: Viewer) -> str:
        """The CSRF token of ``viewer``'s forms."""
        return hmac.new(self._key, b"csrf:" + viewer.credential, hashlib.sha256).hexdigest()

    def csrf_ok(self, viewer: Viewer, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.csrf(viewer), presented)

    def writers(self) -> list[str]:
        """Names of the tokens that may act (who can promote a paused rollout)."""
        if self.tokens is None:
            return []
        return sorted(t.name for t in self.tokens.tokens if t.role is Role.WRITE)


def cookie_header(token: str, *, secure: bool, max_age: int = 8 * 3600) -> str:
    """The Set-Cookie value that signs a browser in (or out, with an empty token)."""
    parts = [
        f"{COOKIE}={token}",
        "Path=/",
        "HttpOnly",
        "SameSite=Strict",
        f"Max-Age={max_age if token else 0}",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)

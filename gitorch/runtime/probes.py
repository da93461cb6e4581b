"""HTTP and TCP health checks against an address, shared by every driver.

A probe reaches the replica itself: no proxy from the environment, no redirect followed
(a 3xx answer is healthy, as in Kubernetes), IPv6 literals bracketed.

``urllib.request`` (with ``http.client``, ``ssl`` and ``email``: ~12 ms) is imported by the
first HTTP probe, not with the drivers: ``gitorch plan`` and ``validate`` load a driver
and seldom probe over HTTP.
"""

from __future__ import annotations

import socket
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib.request


@cache
def _opener() -> urllib.request.OpenerDirector:
    """No proxy from the environment, and redirects judged, not followed (made once)."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """A probe judges the redirect itself (3xx is success); it never follows it."""

        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def http_check(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """GET ``http://host:port/path``: (healthy, message). 2xx and 3xx are healthy."""
    if not path.startswith("/"):
        path = "/" + path
    import urllib.error

    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    try:
        with _opener().open(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
        exc.close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"GET {path}: {reason}"
    return 200 <= status < 400, f"HTTP {status}"


def tcp_check(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Open and close a TCP connection to ``host:port``: (open, message)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"tcp {host}:{port} open"
    except OSError as exc:
        return False, f"tcp {host}:{port}: {exc.strerror or exc}"

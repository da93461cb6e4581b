"""HTTP and TCP health checks against an address, shared by every driver.

A probe reaches the replica itself: no proxy from the environment, no redirect followed
(a 3xx answer is healthy, as in Kubernetes), IPv6 literals bracketed.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A probe judges the redirect itself (3xx is success); it never follows it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http_check(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """GET ``http://host:port/path``: (healthy, message). 2xx and 3xx are healthy."""
    if not path.startswith("/"):
        path = "/" + path
    url = f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"
    try:
        with _OPENER.open(url, timeout=timeout) as response:
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

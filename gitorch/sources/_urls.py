"""Telling Git URLs from local paths, and printing URLs without the secrets in them.

A URL may carry credentials (``https://user:token@host/repo.git``). They must reach git,
but never a log line, an error message or the API: every URL gitorch prints goes through
:func:`redact_url`, and every message git writes goes through :func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: Schemes gitorch hands to git as remote URLs.
REMOTE_SCHEMES = ("https", "http", "ssh", "git", "file")

_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# scp-like syntax: [user@]host:path, where host has no "/" and the path does not start with "//".
_SCP_RE = re.compile(r"^(?:[A-Za-z0-9._~-]+@)?[A-Za-z0-9.-]+:(?!//)[^\s]*$")
# userinfo inside any scheme URL found in free text (git's own messages repeat the URL).
_USERINFO_IN_TEXT_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def is_remote_url(text: str) -> bool:
    """True when ``text`` is a Git URL (``https://``, ``ssh://``, ``file://``, ``git@host:path``)."""
    match = _SCHEME_RE.match(text)
    if match:
        return match.group("scheme").lower() in REMOTE_SCHEMES
    # "C:" style drive letters do not exist on the platforms gitorch runs on; a path with a
    # "/" before the first ":" is a local path ("./a:b"), which the regex excludes.
    return bool(_SCP_RE.match(text)) and "/" not in text.split(":", 1)[0]


def redact_url(url: str) -> str:
    """``url`` without any ``user[:password]@`` part (scp-like ``git@host:path`` is kept:
    its user is the SSH login, never a secret)."""
    if not _SCHEME_RE.match(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every scheme URL in it removed."""
    return _USERINFO_IN_TEXT_RE.sub(lambda m: m.group("scheme"), text)

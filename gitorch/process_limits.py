"""The limits a long-running gitorch process sets for itself at start.

Open files: a shell's soft limit is often 1,024, while the daemon holds a pidfd per
replica it watches (4,000 at 2,000 services) and the proxy two sockets per proxied
connection (about 500 clients at 1,024). Like HAProxy, nginx and Go programs, gitorch
raises its soft limit towards the hard one the administrator allows, capped at
:data:`OPEN_FILES_WANTED`; the cap keeps what replicas inherit modest (programs that
close every descriptor up to the limit at start stay fast).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: Enough for the daemon's pidfds, its store and API, and tens of thousands of proxied
#: connections; replicas inherit it (Docker's replicas get the engine's own limit).
OPEN_FILES_WANTED = 65536


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to ``min(wanted, hard)`` if it is lower; the
    soft limit in force afterwards. Never lowers it, never fails the start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a container may refuse even within hard
            log.warning("open files limit stays at %d (could not raise it: %s)", soft, exc)
            return soft
        return target
    return soft

"""The errors of the HAProxy data plane."""

from __future__ import annotations

from gitorch.errors import GitorchError


class HAProxyError(GitorchError):
    """HAProxy could not be started, reloaded or driven."""


class HAProxyConfigInvalid(HAProxyError):
    """``haproxy -c`` refused the rendered configuration (its message is the detail)."""


class HAProxyReloadFailed(HAProxyError):
    """The master could not start a worker with the new configuration; the old worker
    keeps serving the previous one."""

"""HAProxy as gitorch's data plane, in rooms: configuration rendering (:mod:`.config`),
process supervision (:mod:`.process`), the runtime API (:mod:`.runtime_api`), the request
log reader (:mod:`.latency_log`), and the data plane that ties them (:mod:`.dataplane`)."""

from gitorch.traffic.haproxy.dataplane import HAProxyDataPlane
from gitorch.traffic.haproxy.errors import HAProxyConfigInvalid, HAProxyError, HAProxyReloadFailed
from gitorch.traffic.haproxy.latency_log import LatencyLog

__all__ = [
    "HAProxyConfigInvalid",
    "HAProxyDataPlane",
    "HAProxyError",
    "HAProxyReloadFailed",
    "LatencyLog",
]

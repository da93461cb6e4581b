"""``gitorch proxy``: the built-in data plane as a long-lived process of its own.

:mod:`.server` is the proxy process, :mod:`.client` the daemon's
:class:`~gitorch.traffic.table.DataPlane` that drives (and starts) it, :mod:`.control`
the control channel between them.
"""

"""The built-in load balancer (see :mod:`.balancer`): its rooms are the balancer and its
listeners (:mod:`.balancer`), the fast path served by callbacks (:mod:`.fast`), HTTP/1.1 on
streams (:mod:`.http1`), the backends and their connections (:mod:`.backends`), timeouts
and deadlines (:mod:`.timing`) and the event loops (:mod:`.loops`)."""

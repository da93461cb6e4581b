"""The etcd backend of the state store (``--state etcd://...``): the records of one gitorch
cluster under ``/gitorch/NAMESPACE/``, writes in etcd transactions fenced by leadership,
and the election of the one daemon that reconciles (:mod:`.election`)."""

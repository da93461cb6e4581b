"""gitorch: a GitOps declarative reconciler for containers.

The flow of one reconcile, and which package owns each step, is described in
``docs/architecture.md``.
"""

__version__ = "0.1.0"

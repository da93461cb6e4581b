"""Shared code of the example shop's apps (stdlib only): see :mod:`common.server`."""

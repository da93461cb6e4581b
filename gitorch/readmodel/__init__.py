"""The read model: the documents ``status`` and ``history`` show, built from the store and a
live state.

Both the commands (``gitorch status``, ``gitorch history``: text and JSON) and the daemon's
HTTP API (``GET /api/v1/status``, ``/api/v1/history``) serve these same documents, so the
two paths cannot drift. Nothing here changes the world or renders text: rendering lives in
:mod:`gitorch.commands`, the loop in :mod:`gitorch.daemon`, both above this package.
"""

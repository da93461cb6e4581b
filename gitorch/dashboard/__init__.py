"""The web dashboard, served by the daemon at ``/`` of its ``--listen`` address (the API
stays under ``/api/v1/``): the cluster, services and their rollouts live, history with
field diffs, the plan, the audit log; promote, abort, drain and reconcile for write tokens.

Rooms: :mod:`.views` renders documents as HTML (pure), :mod:`.security` identifies viewers
and guards forms (cookies, CSRF), :mod:`.app` routes requests and streams changes.
"""

from gitorch.dashboard.app import Dashboard, DashboardHandle

__all__ = ["Dashboard", "DashboardHandle"]

"""Renderers of a :class:`~gitorch.diff.plan.Plan`: text (people), markdown (PRs), JSON.

The JSON form is ``Plan.to_json()`` (see ``docs/cli.md``); it is deterministic, so the
same plan renders byte-identically every time.
"""

from __future__ import annotations

import json

from gitorch.diff.plan import Plan


def render_json(plan: Plan) -> str:
    """The plan as JSON text, stable key order, newline-terminated."""
    return json.dumps(plan.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

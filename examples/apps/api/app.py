"""api: the shop's back end.

Besides the shared /healthz and version page, ``GET /items`` answers a small JSON
catalogue tagged with the serving version, so a client can tell versions apart during a
rollout. See ``examples/apps/common/server.py`` for the shared behaviour and env switches.

Run: ``PORT=8081 VERSION=1 python3 examples/apps/api/app.py``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Plain script, shared module next to it (see web/app.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.server import AppSpec, Reply, Settings, main  # noqa: E402

CATALOGUE = (
    {"sku": "mug-001", "name": "Mug", "price": 8.5},
    {"sku": "tee-002", "name": "T-shirt", "price": 19.0},
    {"sku": "cap-003", "name": "Cap", "price": 12.0},
)


def build(settings: Settings) -> AppSpec:
    """api = the shared server plus ``/items``."""

    def items() -> Reply:
        body = json.dumps({"version": settings.version, "items": list(CATALOGUE)})
        return Reply(200, body + "\n", "application/json")

    return AppSpec(settings=settings, routes={"/items": items})


if __name__ == "__main__":
    main("api", build)

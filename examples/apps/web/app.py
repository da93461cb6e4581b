"""web: the shop's front end.

``GET /api`` asks the api service for its version page and shows the answer. The api is
found the Kubernetes way, through ``API_SERVICE_HOST`` and ``API_SERVICE_PORT`` (gitorch
points them at the api's stable endpoint). Everything else is the shared server: see
``examples/apps/common/server.py`` for /healthz, / and the misbehaviour switches.

Run: ``PORT=8080 VERSION=1 python3 examples/apps/web/app.py``
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

# The apps are plain scripts (the process driver runs "python3 examples/apps/web/app.py"),
# so the shared module is found next to them rather than installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.server import AppSpec, Reply, Settings, main  # noqa: E402

#: How long web waits for the api before answering 504 itself.
API_TIMEOUT_SECONDS = 2.0


def call_api() -> Reply:
    """Fetch the api's version page and wrap it in web's own answer."""
    host = os.environ.get("API_SERVICE_HOST", "")
    port = os.environ.get("API_SERVICE_PORT", "")
    if not host or not port:
        return Reply(503, "api not configured: set API_SERVICE_HOST and API_SERVICE_PORT\n")
    url = f"http://{host}:{port}/"
    try:
        with urllib.request.urlopen(url, timeout=API_TIMEOUT_SECONDS) as resp:  # noqa: S310
            answer = resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return Reply(502, f"api at {url} answered {exc.code}\n")
    except TimeoutError:
        return Reply(504, f"api at {url} did not answer within {API_TIMEOUT_SECONDS}s\n")
    except (urllib.error.URLError, OSError) as exc:
        return Reply(502, f"api at {url} unreachable: {exc}\n")
    return Reply(200, f"api says: {answer}\n")


def build(settings: Settings) -> AppSpec:
    """web = the shared server plus ``/api``."""
    return AppSpec(settings=settings, routes={"/api": call_api})


if __name__ == "__main__":
    main("web", build)

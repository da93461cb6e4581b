"""The dashboard's service page says which version a crash-looping replica runs, as
`gitorch status` does: during a canary a slot holds a stable and a new replica, each
backing off on its own."""

from __future__ import annotations

from gitorch.dashboard.views import PageContext, service_body

CTX = PageContext(viewer_name="ops", can_write=False, signed_in=True, needs_login=True, csrf="x")


def test_a_stable_replicas_back_off_is_named_beside_the_new_ones() -> None:
    entry = {"replicas": {}, "restarts": 0, "failedStarts": 0, "exitCode": 137}
    service = {
        "name": "web",
        "rollout": {"phase": "Paused"},
        "instances": [],
        "backoff": [
            {**entry, "replica": "web-3", "stable": True, "restarts": 2, "lastCause": "x"},
            {**entry, "replica": "web-3", "stable": False, "restarts": 1, "lastCause": "y"},
        ],
    }
    html = service_body(service, [], CTX)
    assert "web-3 (stable version): 2 restarts, last cause x" in html
    assert "web-3: 1 restarts, last cause y" in html

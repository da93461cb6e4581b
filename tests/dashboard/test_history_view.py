"""The dashboard's history page says what a Volume leaving Git did to its data, as
`gitorch history` does (the reclaim policy recorded with the change)."""

from __future__ import annotations

from typing import Any

import pytest

from gitorch.dashboard.views import PageContext, history_body

CTX = PageContext(viewer_name="ops", can_write=False, signed_in=True, needs_login=True, csrf="x")


def _revision(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"revision": "a" * 40, "result": "succeeded", "message": "drop data", "changes": changes}


def _volume_deleted(policy: str) -> dict[str, Any]:
    return {
        "kind": "Volume",
        "name": "counter-data",
        "action": "delete",
        "diff": [{"path": "spec.reclaimPolicy", "before": policy, "after": None}],
    }


@pytest.mark.parametrize(("policy", "said"), [("Retain", "retained"), ("Delete", "deleted")])
def test_a_volume_leaving_git_says_whether_its_data_stays(policy: str, said: str) -> None:
    html = history_body([_revision(_volume_deleted(policy))], CTX)
    assert f"Volume/counter-data <em>(data {said})</em></summary>" in html, html


def test_other_changes_say_nothing_of_data() -> None:
    service = {"kind": "Service", "name": "web", "action": "delete", "diff": []}
    html = history_body([_revision(service)], CTX)
    assert "data retained" not in html and "data deleted" not in html
    assert "delete Service/web</summary>" in html

"""Golden plans: each folder under tests/plans/ is a case (desired manifests, applied
manifests, live.json) with its expected plan in three renderings. See README.md.

``GITORCH_UPDATE_GOLDEN=1 python3 -m pytest tests/plans`` rewrites the expected files;
read every changed one before committing it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from livedata import NOW, REVISION, build_live, load_folder
from rich.console import Console

from gitorch.decide import decide_pass
from gitorch.decide.cluster import pass_input_of
from gitorch.diff import Plan, compute_plan
from gitorch.diff.render import json_text, render_json
from gitorch.diff.render.markdown import render_markdown
from gitorch.diff.render.text import render_plain, render_text

HERE = Path(__file__).parent
CASES = sorted(p.name for p in HERE.iterdir() if (p / "manifests").is_dir())
UPDATE = os.environ.get("GITORCH_UPDATE_GOLDEN") == "1"
#: Fixed width: a golden must not depend on the terminal that ran the test.
WIDTH = 100


def plan_for(case: str) -> Plan:
    """The case's plan with its next pass, decided as the reconciler would at NOW."""
    folder = HERE / case
    desired, live = load_folder(folder / "manifests", REVISION), build_live(folder)
    decision = decide_pass(pass_input_of(desired, live, NOW))
    return compute_plan(desired, live, decision=decision)


def text_of(plan: Plan) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=WIDTH, color_system=None, force_terminal=False, no_color=True
    )
    render_text(plan, console)
    return buffer.getvalue()


def renderings(plan: Plan) -> dict[str, str]:
    return {
        "plan.json": render_json(plan),
        "plan.txt": text_of(plan),
        "plan.md": render_markdown(plan),
    }


def test_there_are_cases() -> None:
    assert len(CASES) >= 15, CASES


@pytest.mark.parametrize("case", CASES)
def test_golden_plan(case: str) -> None:
    plan = plan_for(case)
    produced = renderings(plan)
    folder = HERE / case
    if UPDATE:
        for name, text in produced.items():
            (folder / name).write_text(text, encoding="utf-8")
    for name, text in produced.items():
        expected = (folder / name).read_text(encoding="utf-8")
        assert text == expected, f"{case}/{name} differs (GITORCH_UPDATE_GOLDEN=1 rewrites it)"
    # The JSON golden is the plan: it must parse back to the same content and digest.
    assert json.loads(produced["plan.json"])["digest"] == plan.digest
    # Written piece by piece (render_json), it is the plan's JSON written at once.
    assert produced["plan.json"] == json_text(plan.to_json())
    # The daemon's text for `gitorch plan --server` is the text a pipe gets.
    assert render_plain(plan) == produced["plan.txt"]
    # Recomputing from the same inputs gives the same plan, byte for byte.
    assert renderings(plan_for(case)) == produced


#: The secret values of the secret-redaction case (desired, applied, created, deleted).
SECRETS = (
    "hunter2-NEW-s3cr3t",
    "hunter2-OLD-s3cr3t",
    "tok-NEW-abcdef123",
    "tok-OLD-abcdef123",
    "sk-live-NEWBILLING",
    "legacy-OLD-sessionkey",
)


def test_secret_values_never_appear() -> None:
    folder = HERE / "secret-redaction"
    inputs = "".join(p.read_text() for p in folder.rglob("*.yaml"))
    assert all(secret in inputs for secret in SECRETS)  # the case really holds them
    plan = plan_for("secret-redaction")
    changed = {c.path for change in plan.changes for c in change.diff if c.sensitive}
    assert {"spec.env.PASSWORD", "spec.env.API_TOKEN", "spec.env.STRIPE_API_KEY"} <= changed
    assert "spec.env.SESSION_KEY" in changed
    for name, text in renderings(plan).items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked into {name}"
        assert "(sensitive value)" in text
    # The committed goldens too (a rewrite must never freeze a leak).
    for name in ("plan.json", "plan.txt", "plan.md"):
        text = (folder / name).read_text(encoding="utf-8")
        assert not any(secret in text for secret in SECRETS), name

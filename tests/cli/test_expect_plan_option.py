"""`apply --expect-plan DIGEST` takes a digest or a prefix of 12 or more hex digits, and
says so at once when given anything else: a cut or mistyped digest used to reach the
reconcile and be reported as "the plan changed since it was reviewed", which it had not
(and the state directory was made on the way)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import gitorch

from gitorch.cli import build_parser

DIGEST = "9e0686b1e4480dd2ec43c379e1027979a76ed6b8aeed704d2a6e749ecec8aec3"


@pytest.mark.parametrize("given", [DIGEST, DIGEST[:12], DIGEST.upper()[:20], f" {DIGEST[:16]} "])
def test_a_digest_or_a_long_enough_prefix_is_taken(given: str) -> None:
    args = build_parser("apply").parse_args(["apply", "--expect-plan", given])
    assert args.expect_plan == given.strip().lower()


@pytest.mark.parametrize("given", [DIGEST[:10], DIGEST + "0", "g" * 12, "", "9e0686b1e448-x"])
def test_anything_else_is_a_usage_error_before_any_work(given: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = gitorch(tmp_path, "apply", "--state", str(state), "--expect-plan", given)
    assert done.returncode == 1, done.stderr
    assert "argument --expect-plan: a plan digest is 12 to 64 hex digits" in done.stderr
    assert "plan changed" not in done.stderr
    assert not state.exists()

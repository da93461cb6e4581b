"""Plan JSON and digest: stable, content-only; check_expected (apply --expect-plan)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitorch.diff import (
    DriftItem,
    FieldChange,
    ObjectChange,
    PlacementItem,
    Plan,
    Unschedulable,
    check_expected,
    compute_plan,
)
from gitorch.diff.render import render_json
from gitorch.errors import PlanChanged
from gitorch.live.model import LiveNode, LiveState
from gitorch.manifests import ManifestLoader
from gitorch.strategies.preview import RolloutPreview


def sample_plan(**overrides: object) -> Plan:
    plan = Plan(
        revision="a" * 40,
        base_revision="b" * 40,
        path="deploy",
        changes=(
            ObjectChange(
                "Service",
                "web",
                "update",
                (FieldChange("change", "spec.image", "web:1", "web:2"),),
                RolloutPreview("RollingUpdate", ("batch 1: start 1 new, then stop 1 old",)),
                True,
                "b" * 40,
            ),
        ),
        drift=(DriftItem("api", "correct", "replica api-2 exited", ("api-2",)),),
        placements=(PlacementItem("web", "web-1", "node-a"),),
        unschedulable=(
            Unschedulable(
                "web",
                "web-2",
                ("node-a: NotReady", "node-b: cordoned (unschedulable)"),
                {"cordoned": 1, "NotReady": 1},
            ),
        ),
        order=(("api",), ("web",)),
        unchanged=("Service/db",),
        warnings=("node node-c is NotReady (no answer): its replicas are unknown",),
    )
    return dataclasses.replace(plan, **overrides)  # type: ignore[arg-type]


def test_same_plan_same_json_and_digest() -> None:
    first, second = sample_plan(), sample_plan()
    assert first.digest == second.digest
    assert render_json(first) == render_json(second) == render_json(first)
    assert json.dumps(first.to_json(), sort_keys=True) == json.dumps(
        first.to_json(), sort_keys=True
    )


def test_digest_is_sha256_of_the_body_without_itself() -> None:
    plan = sample_plan()
    body = plan.to_json()
    digest = body.pop("digest")
    assert body == plan.body()
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert digest == hashlib.sha256(text.encode()).hexdigest()


def test_digest_ignores_dict_insertion_order() -> None:
    a = sample_plan()
    b = sample_plan(
        unschedulable=(
            Unschedulable(
                "web",
                "web-2",
                ("node-a: NotReady", "node-b: cordoned (unschedulable)"),
                {"NotReady": 1, "cordoned": 1},
            ),
        )
    )
    assert a.digest == b.digest


@pytest.mark.parametrize(
    "change",
    [
        {"revision": "c" * 40},
        {"base_revision": None},
        {"placements": (PlacementItem("web", "web-1", "node-b"),)},
        {"order": (("api", "web"),)},
        {"warnings": ()},
        {"drift": (DriftItem("api", "warn", "replica api-2 exited", ("api-2",)),)},
    ],
)
def test_any_content_change_changes_the_digest(change: dict[str, object]) -> None:
    assert sample_plan(**change).digest != sample_plan().digest


def test_computed_plans_are_stable() -> None:
    doc = b"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: web}
spec: {image: "web:1", replicas: 2, env: {PASSWORD: pw-s3cret-value, A: b}}
"""

    class File:
        path = "web.yaml"
        blob_id = "x"
        data = doc

    def plan() -> Plan:
        desired = ManifestLoader().load([File()], revision="d" * 40).state
        assert desired is not None
        node = LiveNode("node-a", "docker", True, "127.0.0.1", 2000, 4 * 1024**3)
        live = LiveState("c", 0.0, {"node-a": node}, {})
        return compute_plan(desired, live)

    first, second = plan(), plan()
    assert render_json(first) == render_json(second)
    assert first.digest == second.digest
    assert "pw-s3cret-value" not in render_json(first)
    assert "(sensitive value)" in render_json(first)


def test_check_expected_accepts_the_digest_and_a_long_enough_prefix() -> None:
    plan = sample_plan()
    check_expected(plan, plan.digest)
    check_expected(plan, plan.digest[:12])
    check_expected(plan, f"  {plan.digest[:20].upper()}\n")


@pytest.mark.parametrize("bad", ["", "abc", "0" * 64, "PREFIX"])
def test_check_expected_refuses_others(bad: str) -> None:
    plan = sample_plan()
    with pytest.raises(PlanChanged) as info:
        check_expected(plan, bad)
    assert plan.digest[:12] in str(info.value)


def test_check_expected_refuses_a_too_short_prefix() -> None:
    plan = sample_plan()
    with pytest.raises(PlanChanged):
        check_expected(plan, plan.digest[:11])


def test_summary_and_has_changes() -> None:
    plan = sample_plan()
    assert plan.summary == {
        "create": 0,
        "update": 1,
        "delete": 0,
        "unchanged": 1,
        "drift": 1,
        "unschedulable": 1,
        "actions": 0,
        "volumeActions": 0,
    }
    assert plan.has_changes
    quiet = sample_plan(
        changes=(), drift=(DriftItem("api", "warn", "x"),), placements=(), unschedulable=()
    )
    assert not quiet.has_changes


finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-05, -2.5e-7, 1e16, 1.5e300, 0.0001, 123.0, -0.0])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=4), finite_json))
def test_the_digest_is_that_of_the_standard_compact_text(body: dict[str, object]) -> None:
    """orjson writes the digested text (4x faster); the digest stays that of the standard
    encoder's compact text with sorted keys: any string, key order, float form, big int."""
    from gitorch.diff.plan import _digest_of

    standard = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert _digest_of(body) == hashlib.sha256(standard.encode("utf-8")).hexdigest()


def _many_creates(count: int, prefix: str = "svc", **spec: object) -> tuple[ObjectChange, ...]:
    from gitorch.diff.fields import object_leaves

    return tuple(
        ObjectChange(
            "Service",
            f"{prefix}-{i:04d}",
            "create",
            object_leaves(
                {
                    "metadata": {"name": f"{prefix}-{i:04d}"},
                    "spec": {"image": f"shop/{i}:1", "env": {"TOKEN": "t", "A": "b"}, **spec},
                },
                "add",
            ),
            RolloutPreview("Create", ("start 1 replica",)),
            True,
        )
        for i in range(count)
    )


@pytest.mark.parametrize(
    "late",
    [
        {},
        {"weight": 1e-05},  # written otherwise by the standard encoder: its text is digested
        {"weight": 2**70},  # refused by orjson: the standard encoders write all of it
    ],
    ids=["plain", "float-form", "big-int"],
)
def test_the_json_written_piece_by_piece_is_the_whole_text(late: dict[str, object]) -> None:
    """A plan of more changes than a piece holds, written piece by piece (its digest's
    text too): the same bytes and digest as written at once, whatever the last piece
    holds (a float the standard encoder writes otherwise, an integer orjson refuses)."""
    import orjson

    from gitorch.diff.plan import CHANGES_PER_PIECE, compact_pieces
    from gitorch.diff.render import json_bytes, render_json_pieces

    count = 2 * CHANGES_PER_PIECE + 7
    changes = _many_creates(count - 1) + _many_creates(1, "zz-last", **late)
    plan = sample_plan(changes=tuple(sorted(changes, key=lambda c: c.name)))
    body = plan.body()
    standard = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    whole = {**body, "digest": hashlib.sha256(standard.encode("utf-8")).hexdigest()}
    assert b"".join(render_json_pieces(plan)) == json_bytes(whole)
    assert len(list(render_json_pieces(plan))) > 3
    assert plan.digest == whole["digest"]
    if late != {"weight": 2**70}:
        assert b"".join(compact_pieces(body)) == orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

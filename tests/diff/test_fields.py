"""diff_values / diff_objects: leaf paths, list keying and secret redaction."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitorch.diff.fields import (
    SENSITIVE,
    FieldChange,
    diff_objects,
    diff_values,
    object_leaves,
    redacted_env,
)


def ops(before: Any, after: Any) -> list[tuple[str, str, Any, Any]]:
    return [(c.op, c.path, c.before, c.after) for c in diff_values(before, after)]


CASES = [
    pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
    pytest.param({"a": 1}, {"a": 2}, [("change", "a", 1, 2)], id="scalar-change"),
    pytest.param(
        {},
        {"a": {"b": 1, "c": {"d": 2}}},
        [("add", "a.b", None, 1), ("add", "a.c.d", None, 2)],
        id="nested-add-lists-every-leaf",
    ),
    pytest.param(
        {"a": {"b": 1, "c": {"d": 2}}},
        {"a": {"b": 1}},
        [("remove", "a.c.d", 2, None)],
        id="nested-remove",
    ),
    pytest.param({}, {"a": {}}, [("add", "a", None, {})], id="empty-mapping-is-a-leaf"),
    pytest.param(
        {"a": {"x": 1}}, {"a": 5}, [("change", "a", {"x": 1}, 5)], id="type-change-whole-value"
    ),
    pytest.param(
        {"cmd": ["a", "b"]},
        {"cmd": ["a", "c"]},
        [("change", "cmd", ["a", "b"], ["a", "c"])],
        id="scalar-list-is-one-value",
    ),
    pytest.param(
        {"p": [{"name": "http", "port": 80}, {"name": "admin", "port": 9}]},
        {"p": [{"name": "admin", "port": 9}, {"name": "http", "port": 80}]},
        [],
        id="named-list-reordered-is-no-change",
    ),
    pytest.param(
        {"p": [{"name": "http", "port": 80}]},
        {"p": [{"name": "http", "port": 81}]},
        [("change", "p[http].port", 80, 81)],
        id="named-list-item-changed",
    ),
    pytest.param(
        {"p": [{"name": "http", "port": 80}]},
        {"p": [{"name": "web", "port": 80}]},
        [("add", "p[web].port", None, 80), ("remove", "p[http].port", 80, None)],
        id="named-list-renamed-adds-then-removes",
    ),
    pytest.param(
        {"t": [{"key": "a", "v": 1}, {"key": "b", "v": 2}]},
        {"t": [{"key": "a", "v": 1}, {"key": "b", "v": 3}]},
        [("change", "t[1].v", 2, 3)],
        id="index-list-same-length",
    ),
    pytest.param(
        {"t": [{"key": "a"}, {"key": "c"}]},
        {"t": [{"key": "a"}, {"key": "b"}, {"key": "c", "v": {}}]},
        [
            ("change", "t[1].key", "c", "b"),
            ("add", "t[2].key", None, "c"),
            ("add", "t[2].v", None, {}),
        ],
        id="index-list-grown-by-position",
    ),
    pytest.param(
        {"t": [{"key": "a"}, {"key": "b"}]},
        {"t": []},
        [("remove", "t[0].key", "a", None), ("remove", "t[1].key", "b", None)],
        id="index-list-emptied",
    ),
    pytest.param(
        {"t": [1]},
        {"t": [1, 2]},
        [("change", "t", [1], [1, 2])],
        id="scalar-list-is-one-value",
    ),
    pytest.param(
        {"p": []},
        {"p": [{"name": "http", "port": 80}]},
        [("add", "p[http].port", None, 80)],
        id="empty-list-to-named-list",
    ),
    pytest.param(
        {"p": [{"name": "a", "x": 1}, {"name": "a", "x": 2}]},
        {"p": [{"name": "a", "x": 1}, {"name": "a", "x": 3}]},
        [("change", "p[1].x", 2, 3)],
        id="duplicate-names-fall-back-to-index",
    ),
]


@pytest.mark.parametrize(("before", "after", "expected"), CASES)
def test_diff_values(before: Any, after: Any, expected: list[tuple[str, str, Any, Any]]) -> None:
    assert ops(before, after) == expected


def test_keys_sorted_and_paths_dotted_under_a_prefix() -> None:
    changes = list(diff_values({"b": 1, "a": 1}, {"b": 2, "a": 2}, "spec"))
    assert [c.path for c in changes] == ["spec.a", "spec.b"]


def test_sensitive_env_values_are_redacted_both_sides() -> None:
    before = {"spec": {"env": {"PASSWORD": "old-pw", "API_TOKEN": "t1", "GREETING": "hi"}}}
    after = {"spec": {"env": {"PASSWORD": "new-pw", "GREETING": "hello", "DB_SECRET": "s"}}}
    changes = {c.path: c for c in diff_values(before, after)}
    assert changes["spec.env.PASSWORD"] == FieldChange(
        "change", "spec.env.PASSWORD", SENSITIVE, SENSITIVE, True
    )
    assert changes["spec.env.API_TOKEN"] == FieldChange(
        "remove", "spec.env.API_TOKEN", SENSITIVE, None, True
    )
    assert changes["spec.env.DB_SECRET"].after == SENSITIVE
    assert changes["spec.env.GREETING"] == FieldChange(
        "change", "spec.env.GREETING", "hi", "hello", False
    )
    text = repr([c.to_json() for c in changes.values()])
    assert "old-pw" not in text and "new-pw" not in text and "t1" not in text


def test_secret_file_reference_is_not_a_secret() -> None:
    before = {"spec": {"env": {"DB_PASSWORD": {"secretFile": "a"}}}}
    after = {"spec": {"env": {"DB_PASSWORD": {"secretFile": "b"}}}}
    (change,) = diff_values(before, after)
    assert change == FieldChange("change", "spec.env.DB_PASSWORD.secretFile", "a", "b", False)


def test_secret_literal_replaced_by_secret_file_hides_the_literal() -> None:
    before = {"spec": {"env": {"PASSWORD": "literal-pw"}}}
    after = {"spec": {"env": {"PASSWORD": {"secretFile": "pw"}}}}
    (change,) = diff_values(before, after)
    assert change.before == SENSITIVE and change.sensitive
    assert "literal-pw" not in repr(change)


def test_only_env_names_are_redacted() -> None:
    before = {"metadata": {"labels": {"PASSWORD": "a"}}}
    after = {"metadata": {"labels": {"PASSWORD": "b"}}}
    (change,) = diff_values(before, after)
    assert (change.before, change.after, change.sensitive) == ("a", "b", False)


def test_diff_objects_compares_metadata_and_spec_only() -> None:
    before = {"apiVersion": "v0", "kind": "Service", "metadata": {"name": "w"}, "spec": {"a": 1}}
    after = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "w"}, "spec": {"a": 2}}
    assert [c.path for c in diff_objects(before, after)] == ["spec.a"]
    created = diff_objects(None, after)
    assert [(c.op, c.path) for c in created] == [("add", "metadata.name"), ("add", "spec.a")]
    assert [c.op for c in diff_objects(before, None)] == ["remove", "remove"]


def test_field_change_json_omits_the_absent_side() -> None:
    assert FieldChange("add", "a", None, 1).to_json() == {"op": "add", "path": "a", "after": 1}
    assert FieldChange("remove", "a", 1, None).to_json() == {
        "op": "remove",
        "path": "a",
        "before": 1,
    }
    assert FieldChange("change", "a", SENSITIVE, SENSITIVE, True).to_json()["sensitive"] is True


def test_redacted_env() -> None:
    env = {"PASSWORD": "x", "A": "b", "TOKEN_FILE": {"secretFile": "t"}}
    assert redacted_env(env) == {"PASSWORD": SENSITIVE, "A": "b", "TOKEN_FILE": {"secretFile": "t"}}


# Canonical-looking objects: the env and secrets subtrees (where redaction applies), named
# lists, lists of mappings and of scalars, empty values, keys that merely start like them.
_keys = st.sampled_from(
    ["env", "secrets", "envFrom", "secretsX", "PASSWORD", "API_TOKEN", "digest", "secretFile"]
) | st.text("abcn", min_size=1, max_size=3)
_scalars = st.none() | st.booleans() | st.integers() | st.text("ab", max_size=2)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_keys, inner, max_size=4)
        | st.lists(
            st.fixed_dictionaries({"name": st.text("xyz", min_size=1)}, optional={"v": inner}),
            max_size=3,
        )
    ),
    max_leaves=12,
)


_specs = st.builds(
    lambda rest, env: {**rest, **env},
    st.dictionaries(_keys, _values, max_size=4),
    st.fixed_dictionaries(
        {}, optional={"env": st.dictionaries(_keys, _values, max_size=4), "secrets": _values}
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=3), _specs)
def test_object_leaves_are_the_diff_against_nothing(
    metadata: dict[str, Any], spec: dict[str, Any]
) -> None:
    """A create's (and a delete's) fields are walked once instead of diffed against
    nothing: the same changes, order and redaction, and the same JSON."""
    obj = {"kind": "Service", "metadata": metadata, "spec": spec}
    for op, reference in (("add", diff_objects(None, obj)), ("remove", diff_objects(obj, None))):
        leaves = object_leaves(obj, op)
        assert list(leaves) == reference
        assert leaves == tuple(reference) and len(leaves) == len(reference)
        assert leaves[:2] == tuple(reference[:2])
        assert leaves.to_json() == [change.to_json() for change in reference]
        assert list(leaves.shown()) == [
            (c.path, c.after if op == "add" else c.before, c.sensitive) for c in reference
        ]
        if reference:
            assert leaves[-1] == reference[-1]

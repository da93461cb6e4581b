"""A manifest means one thing: what a file says does not depend on an unrelated comment.

Issue 22 found three inputs whose value changed with the parse path the loader chose
(a comment holding ``&`` and ``*`` was enough to switch paths). Each case is read as
written and with that comment appended, and both must give the YAML-correct answer.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from gitorch.manifests.yamlload import ParsedFile, parse

# Before the fix, a file with both "&" and "*" went down another parse path.
PATH_SWITCH = "# & *\n"


def both_ways(text: str) -> tuple[ParsedFile, ParsedFile]:
    return parse(text.encode()), parse((text + PATH_SWITCH).encode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # issue 22, item 1: anchors on mapping keys
        ("&a a: &b b\n*b : *a\n", {"a": "b", "b": "a"}),
        ("labels: {&k app: web, copy: *k}\n", {"labels": {"app": "web", "copy": "app"}}),
        ("labels:\n  &k app: web\n  copy: *k\n", {"labels": {"app": "web", "copy": "app"}}),
        ("? &k app\n: web\ncopy: *k\n", {"app": "web", "copy": "app"}),
        # issue 22, item 2: the non-specific tag "!" makes a string (YAML 1.2, 6.9.1)
        ("a: ! 12\n", {"a": "12"}),
        ("a: ! true\nb: ! null\nc: ! 1.5\n", {"a": "true", "b": "null", "c": "1.5"}),
        ("! 12: x\n", {"12": "x"}),
        ("a: [! 1, 2]\n", {"a": ["1", 2]}),
        ("a: ! {b: 1}\nc: ! [1]\n", {"a": {"b": 1}, "c": [1]}),
        # issue 22, item 3: an anchor may be redefined; an alias takes the latest one
        ("a: &x 1\nb: &x 2\n", {"a": 1, "b": 2}),
        ("a: &x 1\nb: &x 2\nc: *x\n", {"a": 1, "b": 2, "c": 2}),
        ("a: &x 1\nb: *x\nc: &x [2]\nd: *x\n", {"a": 1, "b": 1, "c": [2], "d": [2]}),
    ],
)
def test_same_value_on_every_path(text: str, expected: dict[str, Any]) -> None:
    for parsed in both_ways(text):
        assert parsed.problems == []
        assert parsed.documents == [expected]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: *x\n", (1, 4, "unknown alias '*x'")),
        ("a: &x 1\n---\nb: *x\n", (3, 4, "unknown alias '*x'")),
        ("a: !!int x12\n", (1, 4, "invalid YAML: cannot read 'x12' as an integer")),
        (
            "a: !!binary aGk=\n",
            (
                1,
                4,
                "unsupported YAML tag '!!binary' (manifests use plain mappings, lists and scalars)",
            ),
        ),
        ("a: 1\na: 2\n", (2, 1, "duplicate key 'a'")),
        # NaN never equals itself: found by the differential test (two `.nan` keys kept)
        (".nan: 1\n.NaN: 2\n", (2, 1, "duplicate key nan")),
        ("[1]: x\n", (1, 1, "mapping keys must be scalars")),
    ],
)
def test_same_refusal_on_every_path(text: str, problem: tuple[int, int, str]) -> None:
    for parsed in both_ways(text):
        assert parsed.problems == [problem]


def test_nan_survives_both_ways() -> None:
    for parsed in both_ways("a: .nan\n"):
        assert math.isnan(parsed.documents[0]["a"])

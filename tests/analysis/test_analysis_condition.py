"""successCondition: valid conditions evaluate as written; anything else is a parse error."""

from __future__ import annotations

import builtins
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitorch.analysis.condition import ConditionSyntaxError, parse_condition, tokenize
from gitorch.errors import GitorchError


@pytest.mark.parametrize(
    ("text", "result", "expected"),
    [
        ("result < 1", 0.5, True),
        ("result < 1", 1.0, False),
        ("result <= 1", 1.0, True),
        ("result >= 0.99", 0.99, True),
        ("result >= 0.99", 0.9899, False),
        ("result > .5", 0.6, True),
        ("result == 0", 0.0, True),
        ("result == 0", 1e-9, False),
        ("result != 0", 0.0, False),
        ("result < 1 and result >= 0", 0.5, True),
        ("result < 1 and result >= 0", -0.1, False),
        ("result < 0 or result > 10", 11, True),
        ("result < 0 or result > 10", 5, False),
        ("not result > 3", 2, True),
        ("not (result > 3 or result < 1)", 2, True),
        ("result < 1 or result > 5 and result < 6", 5.5, True),  # and binds tighter
        ("(result < 1 or result > 5) and result < 6", 7, False),
        ("-1 <= result", -1, True),
        ("result > -2.5e-1", -0.2, True),
        ("1 > result", 0, True),
        ("  result<1e3  ", 999, True),
    ],
)
def test_valid_conditions(text: str, result: float, expected: bool) -> None:
    assert parse_condition(text).holds(result) is expected


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('touch /tmp/pwned')",
        "result < 1; import os",
        "result.real > 0",
        "result < len('x')",
        "lambda: 1",
        "result < 1 and",
        "result <",
        "< 1",
        "result",
        "1 < 2",
        "result <> 1",
        "result = 1",
        "result < 1)",
        "(result < 1",
        "result < 'a'",
        "x > 1",
        "Result < 1",
        "",
        "   ",
        "result < 1 result > 0",
        "result < --1",
        "result < 1" + " and result < 1" * 100,
    ],
)
def test_invalid_conditions_are_parse_errors(text: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition(text)
    assert isinstance(info.value, GitorchError)
    assert info.value.message


def test_hostile_string_is_never_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing must not reach eval/exec/compile/__import__ even for valid Python."""
    called: list[str] = []

    def trap(name: str):  # type: ignore[no-untyped-def]
        def inner(*args: object, **kwargs: object) -> None:
            called.append(name)
            raise AssertionError(f"{name} called")

        return inner

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, trap(name))
    with pytest.raises(ConditionSyntaxError):
        parse_condition("__import__('os').getcwd() == 0")
    assert parse_condition("result < 1").holds(0)
    assert called == []


def test_error_names_the_column() -> None:
    with pytest.raises(ConditionSyntaxError, match="column 10"):
        parse_condition("result < bogus")


def test_nan_meets_no_condition() -> None:
    assert not parse_condition("result < 1").holds(math.nan)
    assert not parse_condition("not result < 1").holds(math.nan)


def test_tokens_carry_columns() -> None:
    assert [(t.kind, t.text, t.column) for t in tokenize("result>=1")] == [
        ("word", "result", 1),
        ("op", ">=", 7),
        ("number", "1", 9),
        ("end", "", 10),
    ]


@given(
    st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_comparisons_agree_with_python(op: str, threshold: float, result: float) -> None:
    expected = {
        "<": result < threshold,
        "<=": result <= threshold,
        ">": result > threshold,
        ">=": result >= threshold,
        "==": result == threshold,
        "!=": result != threshold,
    }[op]
    assert parse_condition(f"result {op} {threshold!r}").holds(result) is expected


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_the_one_error(text: str) -> None:
    try:
        condition = parse_condition(text)
    except ConditionSyntaxError:
        return
    assert isinstance(condition.holds(0.5), bool)

"""``successCondition``: a tiny, safe boolean language over one number, ``result``.

Grammar (a tokenizer and a recursive-descent parser; nothing is ever handed to ``eval``)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" condition ")" | comparison
    comparison := operand OP operand          OP: < <= > >= == !=
    operand    := "result" | NUMBER | "-" NUMBER

Numbers are decimal (``1``, ``0.99``, ``.5``, ``1e-3``). Any other name, a call, an
attribute, a string or a stray character is a :class:`ConditionSyntaxError` naming the
column. A NaN ``result`` (Prometheus' answer for 0/0) makes every comparison false, so a
condition written as "good when ..." is not met.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from gitorch.errors import ManifestError


class ConditionSyntaxError(ManifestError):
    """A ``successCondition`` that is not in the condition language."""


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}

# One token at a time: spaces, a number, a word, a two- or one-character operator, brackets.
_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z_0-9]*)"
    r"|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<punct>[()\-]))"
)
_KEYWORDS = frozenset({"result", "and", "or", "not"})
_MAX_LENGTH = 1000  # a condition is one line; refuse essays before tokenizing them


@dataclass(frozen=True)
class Token:
    kind: str  # number | word | op | punct | end
    text: str
    column: int  # 1-based


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``end`` token."""
    if len(text) > _MAX_LENGTH:
        raise ConditionSyntaxError(f"successCondition is longer than {_MAX_LENGTH} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            column = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise ConditionSyntaxError(
                f"successCondition {text!r}: unexpected character {text[column - 1]!r} "
                f"at column {column}"
            )
        kind = match.lastgroup
        value = match.group(kind)
        column = match.start(kind) + 1
        if kind == "word" and value not in _KEYWORDS:
            raise ConditionSyntaxError(
                f"successCondition {text!r}: unknown name {value!r} at column {column} "
                "(only `result`, numbers, comparisons, and/or/not and brackets)"
            )
        tokens.append(Token(kind, value, column))
        pos = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# --- The parsed condition: a small tree, evaluated by walking it --------------------------


@dataclass(frozen=True)
class Operand:
    """``result`` (``value`` None) or a number."""

    value: float | None

    def resolve(self, result: float) -> float:
        return result if self.value is None else self.value


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Operand

    def holds(self, result: float) -> bool:
        return _COMPARE[self.op](self.left.resolve(result), self.right.resolve(result))


@dataclass(frozen=True)
class Not:
    inner: Node

    def holds(self, result: float) -> bool:
        return not self.inner.holds(result)


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    parts: tuple[Node, ...]

    def holds(self, result: float) -> bool:
        if self.op == "and":
            return all(part.holds(result) for part in self.parts)
        return any(part.holds(result) for part in self.parts)


Node = Compare | Not | BoolOp


@dataclass(frozen=True)
class Condition:
    """A parsed ``successCondition``; :meth:`holds` says whether a result meets it."""

    text: str
    root: Node

    def holds(self, result: float) -> bool:
        if math.isnan(result):
            return False  # see the module docstring: NaN never meets a condition
        return self.root.holds(result)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def fail(self, expected: str) -> ConditionSyntaxError:
        token = self.peek
        found = "the end" if token.kind == "end" else repr(token.text)
        return ConditionSyntaxError(
            f"successCondition {self.text!r}: expected {expected} at column {token.column}, "
            f"found {found}"
        )

    def parse(self) -> Node:
        node = self.or_()
        if self.peek.kind != "end":
            raise self.fail("`and`, `or` or the end")
        return node

    def or_(self) -> Node:
        parts = [self.and_()]
        while self.peek.text == "or" and self.peek.kind == "word":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def and_(self) -> Node:
        parts = [self.not_()]
        while self.peek.text == "and" and self.peek.kind == "word":
            self.take()
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def not_(self) -> Node:
        token = self.peek
        if token.kind == "word" and token.text == "not":
            self.take()
            return Not(self.not_())
        if token.kind == "punct" and token.text == "(":
            self.take()
            node = self.or_()
            if self.peek.text != ")":
                raise self.fail("`)`")
            self.take()
            return node
        return self.comparison()

    def comparison(self) -> Compare:
        left = self.operand()
        if self.peek.kind != "op":
            raise self.fail("a comparison (< <= > >= == !=)")
        op = self.take().text
        right = self.operand()
        if left.value is not None and right.value is not None:
            raise ConditionSyntaxError(
                f"successCondition {self.text!r}: a comparison of two numbers does not "
                "look at `result`"
            )
        return Compare(left, op, right)

    def operand(self) -> Operand:
        token = self.peek
        if token.kind == "word" and token.text == "result":
            self.take()
            return Operand(None)
        negative = False
        if token.kind == "punct" and token.text == "-":
            self.take()
            negative = True
        if self.peek.kind != "number":
            raise self.fail("`result` or a number")
        value = float(self.take().text)
        return Operand(-value if negative else value)


def parse_condition(text: str) -> Condition:
    """Parse a ``successCondition``; raises :class:`ConditionSyntaxError` when it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionSyntaxError("successCondition is empty")
    return Condition(text, _Parser(text).parse())

"""An independent reading of YAML for the loader's differential test.

It composes documents recursively from libyaml's events (``yaml.parse``), written from the
YAML 1.2 spec rather than from gitorch's builder: core-schema resolution of plain scalars
(10.3.2), the non-specific tag ``!`` as a string (6.9.1), anchors that may be redefined
with aliases naming the most recent one (6.9.2, 7.1), plus the merge key type
(https://yaml.org/type/merge.html) and gitorch's refusals (duplicate keys, collection
keys, tags other than the core ones, recursive aliases). No limits: the generated input is
small.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

Problem = tuple[int, int, str]

CORE = "tag:yaml.org,2002:"


def _int(text: str) -> int:
    if re.fullmatch(r"0o[0-7]+", text):
        return int(text, 0)  # Python reads 0o17 as octal, as YAML does
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text, 10)
    raise ValueError


def _float(text: str) -> float:
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", text):
        return float(text)
    if re.fullmatch(r"[-+]?\.(inf|Inf|INF)", text):
        return -math.inf if text.startswith("-") else math.inf
    if re.fullmatch(r"\.(nan|NaN|NAN)", text):
        return math.nan
    raise ValueError


def _bool(text: str) -> bool:
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    raise ValueError


def _null(text: str) -> None:
    if text not in ("null", "Null", "NULL", "~", ""):
        raise ValueError


def _merge(text: str) -> str:
    if text != "<<":
        raise ValueError
    return text


EXPLICIT = {
    "merge": (_merge, "a merge key"),
    "int": (_int, "an integer"),
    "float": (_float, "a number"),
    "bool": (_bool, "a boolean"),
    "null": (_null, "null"),
}


def resolve_plain(text: str) -> Any:
    """The core schema's tag resolution for an untagged plain scalar, in its order."""
    for construct in (_null, _bool, _int, _float):
        try:
            return construct(text)
        except ValueError:
            continue
    return text


class Refused(Exception):
    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.problem: Problem = (mark.line + 1, mark.column + 1, message)


class _Open:
    """The marker an anchor names while its collection is being read."""


class Reference:
    """``Reference(text).read()`` -> (documents, problems)."""

    def __init__(self, text: str) -> None:
        self.events: Iterator[yaml.Event] = iter(yaml.parse(text, Loader=yaml.CSafeLoader))
        self.peeked: yaml.Event | None = None
        self.problems: list[Problem] = []
        self.anchors: dict[str, Any] = {}

    def next(self) -> yaml.Event:
        if self.peeked is not None:
            event, self.peeked = self.peeked, None
            return event
        return next(self.events)

    def peek(self) -> yaml.Event:
        if self.peeked is None:
            self.peeked = next(self.events)
        return self.peeked

    def read(self) -> tuple[list[Any], list[Problem]]:
        documents: list[Any] = []
        try:
            assert isinstance(self.next(), yaml.StreamStartEvent)
            while isinstance(self.peek(), yaml.DocumentStartEvent):
                self.next()
                self.anchors = {}
                value, _ = self.node()
                assert isinstance(self.next(), yaml.DocumentEndEvent)
                documents.append(value)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.problems.append((mark.line + 1, mark.column + 1, "<libyaml>"))
        except Refused as exc:
            self.problems.append(exc.problem)
        return documents, self.problems

    def node(self) -> tuple[Any, bool]:
        """The next node's value, and whether it is a merge key (a plain ``<<``)."""
        event = self.next()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in self.anchors:
                raise Refused(event.start_mark, f"unknown alias '*{event.anchor}'")
            target = self.anchors[event.anchor]
            if isinstance(target, _Open):
                raise Refused(
                    event.start_mark,
                    f"alias '*{event.anchor}' inside the node it names"
                    " (recursive structures are not allowed)",
                )
            return target
        if isinstance(event, yaml.ScalarEvent):
            result = (self.scalar(event), self.is_merge(event))
            if event.anchor:
                self.anchors[event.anchor] = result
            return result
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            is_map = isinstance(event, yaml.MappingStartEvent)
            own = f"{CORE}{'map' if is_map else 'seq'}"
            if event.tag not in (None, "!", own):
                if event.tag in (f"{CORE}map", f"{CORE}seq"):
                    short = "!!" + event.tag.removeprefix(CORE)
                    what = "a mapping" if is_map else "a sequence"
                    raise Refused(event.start_mark, f"the tag '{short}' cannot be used on {what}")
                raise Refused(event.start_mark, unsupported(event.tag))
            marker = _Open()
            if event.anchor:
                self.anchors[event.anchor] = marker
            value = self.mapping() if is_map else self.sequence()
            if event.anchor and self.anchors[event.anchor] is marker:
                self.anchors[event.anchor] = (value, False)
            return value, False
        raise AssertionError(event)

    @staticmethod
    def is_merge(event: yaml.ScalarEvent) -> bool:
        return event.value == "<<" and (
            (event.tag is None and event.implicit[0]) or event.tag == f"{CORE}merge"
        )

    @staticmethod
    def scalar(event: yaml.ScalarEvent) -> Any:
        text, tag = event.value, event.tag
        if tag is None:
            if not event.implicit[0]:
                return text  # quoted or block scalar
            try:
                return resolve_plain(text)
            except ValueError:
                raise Refused(event.start_mark, f"cannot read {text!r}") from None
        if tag in ("!", f"{CORE}str"):
            return text
        name = tag.removeprefix(CORE) if tag.startswith(CORE) else None
        if name in EXPLICIT:
            construct, what = EXPLICIT[name]
            try:
                return construct(text)
            except ValueError:
                message = f"invalid YAML: cannot read {text!r} as {what}"
                raise Refused(event.start_mark, message) from None
        if name in ("map", "seq"):
            raise Refused(event.start_mark, f"the tag '!!{name}' cannot be used on a scalar")
        raise Refused(event.start_mark, unsupported(tag))

    def sequence(self) -> list[Any]:
        items = []
        while not isinstance(self.peek(), yaml.SequenceEndEvent):
            items.append(self.node()[0])
        self.next()
        return items

    def mapping(self) -> dict[Any, Any]:
        own: dict[Any, Any] = {}
        merges: list[tuple[Any, Any]] = []
        merge_keys = 0
        while not isinstance(self.peek(), yaml.MappingEndEvent):
            key_event = self.peek()
            if isinstance(key_event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                raise Refused(key_event.start_mark, "mapping keys must be scalars")
            key, is_merge = self.node()
            if isinstance(key, dict | list):
                raise Refused(key_event.start_mark, "mapping keys must be scalars")
            mark = key_event.start_mark
            if is_merge:
                merge_keys += 1
                if merge_keys > 1:
                    self.problems.append((mark.line + 1, mark.column + 1, "duplicate key '<<'"))
            elif key in own:
                self.problems.append((mark.line + 1, mark.column + 1, f"duplicate key {key!r}"))
            value_mark = self.peek().start_mark
            value, _ = self.node()
            if is_merge:
                merges.append((value, value_mark))
            else:
                own[key] = value
        self.next()
        # Merged mappings: the mapping's own keys win, then earlier sources over later.
        sources: list[dict[Any, Any]] = []
        for value, mark in merges:
            for source in value if isinstance(value, list) else [value]:
                if not isinstance(source, dict):
                    message = "a merge key ('<<') takes a mapping or a list of mappings"
                    raise Refused(mark, message)
                sources.append(source)
        merged: dict[Any, Any] = {}
        for source in reversed(sources):
            merged.update(source)
        merged.update(own)
        return merged


def unsupported(tag: str) -> str:
    short = "!!" + tag.removeprefix(CORE) if tag.startswith(CORE) else tag
    return f"unsupported YAML tag '{short}' (manifests use plain mappings, lists and scalars)"


def comparable(value: Any) -> Any:
    """A form where equal means the same YAML value: types kept (1, 1.0 and true differ),
    NaN equal to NaN, mapping order ignored."""
    if isinstance(value, dict):
        pairs = [(comparable(k), comparable(v)) for k, v in value.items()]
        return ("map", sorted(pairs, key=repr))
    if isinstance(value, list):
        return ("seq", [comparable(item) for item in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)

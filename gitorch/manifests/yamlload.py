"""YAML loading for untrusted manifests, with positions on demand.

Two loaders share one scalar resolver (the YAML 1.2 core schema: ``yes``/``no``/``on``/``off``
stay strings, ``010`` is ten, timestamps stay strings) so they always agree on values:

* the **fast path**, libyaml's C parser with a checking constructor, used for ordinary files;
  it does not keep positions, which are only needed when something is wrong;
* the **guarded path**, an event-driven builder that records the line and column of every
  key and value and enforces the limits below. It serves files that look hostile (anchors
  together with aliases, or many flow brackets) and :func:`locate`, which maps a field path
  to a position when a diagnostic needs one.

Why two: positions cost 3x the parse (libyaml materialises a Mark object per node), and
libyaml's recursive composer crashes the interpreter on very deep flow nesting, so hostile
input must never reach it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

# libyaml is required: the pure-Python parser is 10x slower and gitorch's limits assume C.
from yaml._yaml import CParser as _Parser
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import BaseResolver

from gitorch.errors import Diagnostic

FieldPath = tuple[str | int, ...]

MAX_DEPTH = 64
MAX_NODES_PER_FILE = 200_000  # after alias expansion
MAX_DOCUMENTS_PER_FILE = 5_000
# A file with both anchors and aliases, or with this many flow brackets, takes the guarded path.
_FLOW_BRACKETS_FAST_LIMIT = 1_000
# Block nesting can be deep on one line too ("- - - - x", "? ? ? x", with anchors or tags
# between): libyaml's recursive composer segfaults on ~100k levels. Every nested block
# level needs at least one more leading space, indicator or node property, so a line that
# starts with more than this many of them takes the guarded path (deeply indented block
# scalars do too: slower, still correct).
_BLOCK_PREFIX_FAST_LIMIT = 64
_DEEP_BLOCK_PREFIX = re.compile(
    rf"^(?:[ \t]|[-?:](?=[ \t\r\n])|[&!][^ \t\r\n]*){{{_BLOCK_PREFIX_FAST_LIMIT}}}",
    re.MULTILINE,
)

_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_MERGE = "tag:yaml.org,2002:merge"
_TAG_SEQ = "tag:yaml.org,2002:seq"
_TAG_MAP = "tag:yaml.org,2002:map"


class _Resolver12(BaseResolver):
    """Implicit scalar types of the YAML 1.2 core schema, plus merge keys (``<<``)."""


_Resolver12.yaml_implicit_resolvers = {}
_Resolver12.add_implicit_resolver(
    _TAG_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver12.add_implicit_resolver(
    _TAG_INT,
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Resolver12.add_implicit_resolver(
    _TAG_FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Resolver12.add_implicit_resolver(
    _TAG_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Resolver12.add_implicit_resolver(_TAG_MERGE, re.compile(r"^(?:<<)$"), ["<"])


def _scalar_value(tag: str, text: str) -> Any:
    """Construct a scalar of the core schema; raises ValueError for an unsupported tag."""
    if tag in (_TAG_STR, "!"):
        return text
    if tag == _TAG_MERGE:
        return "<<"
    if tag == _TAG_NULL:
        return None
    if tag == _TAG_BOOL:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise ValueError(f"'{text}' is not a boolean")
    try:
        if tag == _TAG_INT:
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            return int(text)
        if tag == _TAG_FLOAT:
            lowered = text.lower()
            if lowered.endswith(".inf"):
                return float("-inf") if lowered.startswith("-") else float("inf")
            if lowered == ".nan":
                return float("nan")
            return float(text)
    except ValueError:
        # "!!int x12", or more digits than Python converts: Python's wording means nothing
        # to a manifest author.
        what = "an integer" if tag == _TAG_INT else "a number"
        raise ValueError(f"cannot read {shown(text)} as {what}") from None
    raise _UnsupportedTag(unsupported_tag(tag))


class _UnsupportedTag(ValueError):
    """A tag manifests do not allow; reported as is (it is not a syntax error)."""


def unsupported_tag(tag: str) -> str:
    """The message for a tag manifests do not allow (``!!python/object``, ``!!binary``...)."""
    short = (
        "!!" + tag.removeprefix("tag:yaml.org,2002:")
        if tag.startswith("tag:yaml.org,2002:")
        else tag
    )
    return f"unsupported YAML tag '{short}' (manifests use plain mappings, lists and scalars)"


class _CheckingConstructor(SafeConstructor):
    """SafeConstructor with core-schema scalars that records duplicate and complex keys."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[tuple[int, int, str]] = []

    def construct_scalar_typed(self, node: yaml.ScalarNode) -> Any:
        try:
            return _scalar_value(node.tag, node.value)
        except ValueError as exc:
            raise ConstructorError(None, None, str(exc), node.start_mark) from exc

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                mark = key_node.start_mark
                self.problems.append(
                    (mark.line + 1, mark.column + 1, "mapping keys must be scalars")
                )
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                self.problems.append(
                    (mark.line + 1, mark.column + 1, f"duplicate key {shown(key)}")
                )
            seen.add(key)
            result[key] = self.construct_object(value_node, deep=deep)
        return result


_CheckingConstructor.yaml_constructors = {
    **SafeConstructor.yaml_constructors,
    **{
        tag: _CheckingConstructor.construct_scalar_typed
        for tag in (_TAG_NULL, _TAG_BOOL, _TAG_INT, _TAG_FLOAT, _TAG_MERGE)
    },
}
# Tags the SafeConstructor knows that manifests have no use for: refuse rather than guess.
for _tag in ("binary", "timestamp", "omap", "pairs", "set"):
    _CheckingConstructor.yaml_constructors.pop(f"tag:yaml.org,2002:{_tag}", None)


class _FastLoader(_Parser, _CheckingConstructor, _Resolver12):
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _CheckingConstructor.__init__(self)
        _Resolver12.__init__(self)


@dataclass
class ParsedFile:
    """The documents of one file (``None`` for empty ones) and its problems."""

    documents: list[Any] = field(default_factory=list)
    problems: list[tuple[int, int, str]] = field(default_factory=list)  # (line, col, message)


def decode(data: bytes) -> tuple[str | None, tuple[int, int, str] | None]:
    """UTF-8 text of a manifest, or the position and reason it is not text."""
    nul = data.find(b"\x00")
    if nul >= 0:
        line, col = _offset_position(data, nul)
        return None, (line, col, "binary file (contains NUL bytes); manifests must be UTF-8 text")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line, col = _offset_position(data, exc.start)
        return None, (line, col, f"not valid UTF-8 (byte 0x{data[exc.start]:02x})")


def _offset_position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _looks_hostile(text: str) -> bool:
    if "&" in text and "*" in text:
        return True
    if text.count("[") + text.count("{") > _FLOW_BRACKETS_FAST_LIMIT:
        return True
    return _DEEP_BLOCK_PREFIX.search(text) is not None


def parse(data: bytes) -> ParsedFile:
    """Parse every document of a file; problems carry 1-based line and column."""
    text, problem = decode(data)
    if text is None:
        assert problem is not None
        return ParsedFile(problems=[problem])
    if _looks_hostile(text):
        builder = _GuardedBuilder(text, record_positions=False)
        builder.run()
        return ParsedFile(documents=builder.documents, problems=builder.problems)
    return _parse_fast(text)


def _parse_fast(text: str) -> ParsedFile:
    loader = _FastLoader(text)
    result = ParsedFile()
    try:
        while loader.check_data():
            if len(result.documents) >= MAX_DOCUMENTS_PER_FILE:
                result.problems.append(_too_many_documents(loader))
                break
            result.documents.append(loader.get_data())
    except yaml.MarkedYAMLError as exc:
        result.problems.append(_yaml_error(exc, text))
    except yaml.YAMLError as exc:
        result.problems.append((1, 1, f"invalid YAML: {exc}"))
    finally:
        loader.dispose()
    result.problems.extend(loader.problems)
    return result


def _too_many_documents(loader: Any) -> tuple[int, int, str]:
    # Point at the first document over the limit: check_data() has read up to its content.
    try:
        mark = loader.peek_event().start_mark
    except (AttributeError, yaml.YAMLError):
        mark = None
    line = mark.line + 1 if mark is not None else 1
    return (line, 1, f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file")


def _yaml_error(exc: yaml.MarkedYAMLError, text: str = "") -> tuple[int, int, str]:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or "invalid YAML"
    tag = re.fullmatch(r"could not determine a constructor for the tag '(.*)'", problem, re.S)
    if tag is not None:
        return (line, col, unsupported_tag(tag.group(1)))
    at_tab = mark is not None and 0 <= mark.index < len(text) and text[mark.index] == "\t"
    if "tab character" in problem or at_tab:
        # libyaml blames the scalar it was reading; the fix is always the same.
        return (line, col, "invalid YAML: a tab character in the indentation (indent with spaces)")
    context = ""
    if exc.context:
        # The problem is often found a line after the real mistake (an unclosed "[" is
        # noticed at the next key), so say where the construct being read started.
        start = exc.context_mark
        started = (
            f" started at line {start.line + 1}, column {start.column + 1}"
            if start is not None and mark is not None and start.index != mark.index
            else ""
        )
        context = f" ({exc.context}{started})"
    return (line, col, f"invalid YAML: {problem}{context}")


class _Abort(Exception):
    """A limit was hit: stop reading this file at once."""


@dataclass
class _Frame:
    container: Any  # dict or list
    path: FieldPath
    pending_key: Any = None  # for mappings: the key read, awaiting its value
    pending_merge: bool = False  # that key is a plain << (a quoted '<<' is an ordinary key)
    key_mark: tuple[int, int] | None = None
    has_key: bool = False
    merges: list[Any] = field(default_factory=list)
    anchor: str | None = None


class _GuardedBuilder:
    """Builds documents from parser events, with limits and (optionally) positions."""

    def __init__(self, text: str, *, record_positions: bool) -> None:
        self.text = text
        self.record_positions = record_positions
        self.resolver = _Resolver12()
        self.documents: list[Any] = []
        self.problems: list[tuple[int, int, str]] = []
        # per document: path -> (line, col) of the value, and of the key that names it
        self.value_positions: list[dict[FieldPath, tuple[int, int]]] = []
        self.key_positions: list[dict[FieldPath, tuple[int, int]]] = []
        self._anchors: dict[str, tuple[Any, int]] = {}
        self._nodes = 0

    def run(self) -> None:
        try:
            self._run()
        except _Abort:
            pass
        except yaml.MarkedYAMLError as exc:
            self.problems.append(_yaml_error(exc, self.text))
        except yaml.YAMLError as exc:
            self.problems.append((1, 1, f"invalid YAML: {exc}"))

    def _events(self) -> Iterator[yaml.Event]:
        loader = _FastLoader(self.text)
        try:
            while loader.check_event():
                event = loader.get_event()
                if event is not None:
                    yield event
        finally:
            loader.dispose()

    def _run(self) -> None:
        stack: list[_Frame] = []
        for event in self._events():
            start = event.start_mark
            mark = (start.line + 1, start.column + 1) if start is not None else (1, 1)
            if isinstance(event, yaml.DocumentStartEvent):
                if len(self.documents) >= MAX_DOCUMENTS_PER_FILE:
                    self.problems.append(
                        (mark[0], 1, f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file")
                    )
                    raise _Abort
                self._anchors = {}
                self.value_positions.append({})
                self.key_positions.append({})
                self._doc_value: Any = None
                continue
            if isinstance(event, yaml.DocumentEndEvent):
                self.documents.append(self._doc_value)
                continue
            if isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent)):
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = stack.pop()
                value = frame.container
                if frame.merges:
                    for merged in reversed(frame.merges):
                        for key, item in merged.items():
                            value.setdefault(key, item)
                if frame.anchor:
                    self._anchors[frame.anchor] = (value, self._subtree_size(frame))
                continue
            # a node starts: a scalar, an alias, or a collection
            if stack and isinstance(stack[-1].container, dict) and not stack[-1].has_key:
                self._read_key(stack[-1], event, mark)
                continue
            path = self._child_path(stack)
            self._count(1, mark)
            if len(stack) >= MAX_DEPTH:
                self.problems.append((mark[0], mark[1], f"nesting deeper than {MAX_DEPTH} levels"))
                raise _Abort
            if self.record_positions:
                self.value_positions[-1][path] = mark
            if isinstance(event, yaml.AliasEvent):
                if event.anchor not in self._anchors:
                    self.problems.append((mark[0], mark[1], f"unknown alias '*{event.anchor}'"))
                    raise _Abort
                value, size = self._anchors[event.anchor]
                self._count(size, mark)
                self._attach(stack, value, mark)
            elif isinstance(event, yaml.ScalarEvent):
                value = self._scalar(event, mark)
                if event.anchor:
                    self._anchors[event.anchor] = (value, 1)
                self._attach(stack, value, mark)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self._check_collection_tag(event, mark)
                if isinstance(event, yaml.MappingStartEvent):
                    frame = _Frame(container={}, path=path, anchor=event.anchor)
                else:
                    frame = _Frame(container=[], path=path, anchor=event.anchor)
                frame.start_nodes = self._nodes  # type: ignore[attr-defined]
                self._attach(stack, frame.container, mark)
                stack.append(frame)

    def _check_collection_tag(
        self, event: yaml.CollectionStartEvent, mark: tuple[int, int]
    ) -> None:
        if event.tag not in (None, "!", _TAG_MAP, _TAG_SEQ):
            self.problems.append((mark[0], mark[1], unsupported_tag(event.tag)))
            raise _Abort

    def _subtree_size(self, frame: _Frame) -> int:
        return max(1, self._nodes - getattr(frame, "start_nodes", self._nodes))

    def _count(self, n: int, mark: tuple[int, int] = (1, 1)) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES_PER_FILE:
            self.problems.append(
                (*mark, f"more than {MAX_NODES_PER_FILE} YAML nodes (alias expansion?); refused")
            )
            raise _Abort

    def _read_key(self, frame: _Frame, event: yaml.Event, mark: tuple[int, int]) -> None:
        self._count(1)
        if isinstance(event, yaml.ScalarEvent):
            key = self._scalar(event, mark)
            frame.pending_key = key
            frame.pending_merge = self._resolved_tag(event) == _TAG_MERGE
            frame.key_mark = mark
            frame.has_key = True
            return
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._anchors:
            key = self._anchors[event.anchor][0]
            if isinstance(key, (str, int, float, bool)) or key is None:
                frame.pending_key, frame.key_mark, frame.has_key = key, mark, True
                frame.pending_merge = False
                return
        self.problems.append((mark[0], mark[1], "mapping keys must be scalars"))
        raise _Abort

    def _resolved_tag(self, event: yaml.ScalarEvent) -> str:
        if event.tag is not None:
            return str(event.tag)
        return str(self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit))

    def _scalar(self, event: yaml.ScalarEvent, mark: tuple[int, int]) -> Any:
        tag = self._resolved_tag(event)
        try:
            return _scalar_value(tag, event.value)
        except ValueError as exc:
            # Same wording as the fast path, where these surface as YAML errors.
            prefix = "" if isinstance(exc, _UnsupportedTag) else "invalid YAML: "
            self.problems.append((mark[0], mark[1], f"{prefix}{exc}"))
            raise _Abort from exc

    def _child_path(self, stack: list[_Frame]) -> FieldPath:
        if not stack:
            return ()
        parent = stack[-1]
        if isinstance(parent.container, dict):
            return (*parent.path, parent.pending_key)
        return (*parent.path, len(parent.container))

    def _attach(self, stack: list[_Frame], value: Any, mark: tuple[int, int]) -> None:
        if not stack:
            self._doc_value = value
            return
        parent = stack[-1]
        if isinstance(parent.container, list):
            parent.container.append(value)
            return
        key = parent.pending_key
        parent.has_key = False
        if parent.pending_merge and isinstance(value, (dict, list)):
            merges = value if isinstance(value, list) else [value]
            parent.merges.extend(m for m in merges if isinstance(m, dict))
            return
        try:
            duplicate = key in parent.container
        except TypeError:
            self.problems.append((mark[0], mark[1], "mapping keys must be scalars"))
            raise _Abort from None
        if duplicate and parent.key_mark is not None:
            line, col = parent.key_mark
            self.problems.append((line, col, f"duplicate key {shown(key)}"))
        parent.container[key] = value
        if self.record_positions and parent.key_mark is not None:
            self.key_positions[-1][(*parent.path, key)] = parent.key_mark


@dataclass
class PositionIndex:
    """Positions of every key and value of a file's documents (built on demand)."""

    value_positions: list[dict[FieldPath, tuple[int, int]]]
    key_positions: list[dict[FieldPath, tuple[int, int]]]

    def value(self, document: int, path: FieldPath) -> tuple[int, int]:
        """Position of the value at ``path`` or of its nearest existing ancestor."""
        return self._nearest(self.value_positions, document, path)

    def key(self, document: int, path: FieldPath) -> tuple[int, int]:
        """Position of the key naming ``path`` (falls back to the value's position)."""
        if document < len(self.key_positions) and path in self.key_positions[document]:
            return self.key_positions[document][path]
        return self.value(document, path)

    @staticmethod
    def _nearest(
        table: list[dict[FieldPath, tuple[int, int]]], document: int, path: FieldPath
    ) -> tuple[int, int]:
        if document >= len(table):
            return (1, 1)
        positions = table[document]
        for end in range(len(path), -1, -1):
            found = positions.get(path[:end])
            if found is not None:
                return found
        return (1, 1)


def index_positions(data: bytes) -> PositionIndex:
    """Run the guarded builder with positions on; used only for files with problems."""
    text, _ = decode(data)
    if text is None:
        return PositionIndex([], [])
    builder = _GuardedBuilder(text, record_positions=True)
    builder.run()
    return PositionIndex(builder.value_positions, builder.key_positions)


#: Longest user value echoed in a message; a 1 MB scalar must not make a 1 MB diagnostic.
MAX_SHOWN = 80


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr`` of a user's value for a message, cut to ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str | list | dict) else "long"
    return f"{text[: limit - 1]}… ({size})"


def format_field(path: FieldPath) -> str:
    """``("spec", "ports", 0, "name")`` -> ``spec.ports[0].name``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def diagnostic(
    path: str, line: int, column: int, message: str, field_path: FieldPath = ()
) -> Diagnostic:
    """Shorthand used by the checks."""
    return Diagnostic(path, line, column, message, format_field(field_path))

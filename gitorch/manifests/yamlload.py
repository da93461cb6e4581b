"""YAML loading for untrusted manifests, with positions on demand.

One builder reads every file: it takes libyaml's parser events (the C scanner and parser)
and builds the documents itself, so a file means one thing whatever it contains. It
resolves plain scalars with the YAML 1.2 core schema (``yes``/``no``/``on``/``off`` stay
strings, ``010`` is ten, timestamps stay strings), enforces the limits below, and records
the line and column of every key and value when asked (:func:`index_positions`, used only
when a diagnostic needs a position).

Where YAML and PyYAML's composer differ, the builder follows YAML 1.2:

* an anchor may sit on any node, mapping keys included, and may be redefined: an alias
  refers to the most recent node with that anchor (PyYAML refuses a second ``&x``);
* the non-specific tag ``!`` makes a scalar a string (``! 12`` is ``"12"``; libyaml
  reports it as plain, so PyYAML resolves it to 12);
* an alias to a collection that is still open (a recursive structure) is refused, as is
  a merge key (``<<``) whose value is not a mapping or a list of mappings.

libyaml's composer is not used: it recurses in C and crashes the interpreter on very deep
nesting, which the builder refuses at 64 levels after reading only that far.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

# libyaml is required: the pure-Python parser is 10x slower and gitorch's limits assume C.
from yaml._yaml import CParser as _Parser

from gitorch.errors import Diagnostic

FieldPath = tuple[str | int, ...]
Problem = tuple[int, int, str]  # (line, column, message), 1-based

MAX_DEPTH = 64
MAX_NODES_PER_FILE = 200_000  # after alias expansion
MAX_DOCUMENTS_PER_FILE = 5_000

_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_STR = "tag:yaml.org,2002:str"
_TAG_MERGE = "tag:yaml.org,2002:merge"
_TAG_SEQ = "tag:yaml.org,2002:seq"
_TAG_MAP = "tag:yaml.org,2002:map"
_NON_SPECIFIC = "!"

# The YAML 1.2 core schema (10.3.2), plus merge keys.
_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_MERGE = re.compile(r"<<")


def _int(text: str) -> int:
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)  # ValueError past Python's digit limit: reported by the caller


_NAN = float("nan")


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        # One NaN object: NaN never equals itself, so two `.nan` keys of a mapping would
        # otherwise both be kept instead of being reported as a duplicate key.
        return _NAN
    return float(text)


_Construct = Callable[[str], Any]

# tag -> (pattern its text must match, constructor, what it is, for messages)
_CORE: dict[str, tuple[re.Pattern[str], _Construct, str]] = {
    _TAG_BOOL: (_BOOL, lambda text: text[0] in "tT", "a boolean"),
    _TAG_INT: (_INT, _int, "an integer"),
    _TAG_FLOAT: (_FLOAT, _float, "a number"),
    _TAG_NULL: (_NULL, lambda text: None, "null"),
    _TAG_MERGE: (_MERGE, lambda text: text, "a merge key"),
}


def _implicit_table() -> dict[str, list[tuple[re.Pattern[str], _Construct, str]]]:
    """Plain scalars: the tags to try, in order, by first character (as PyYAML's resolver)."""
    starts = {
        _TAG_BOOL: "tTfF",
        _TAG_INT: "-+0123456789",
        _TAG_FLOAT: "-+0123456789.",
        _TAG_NULL: "~nN",
        _TAG_MERGE: "<",
    }
    table: dict[str, list[tuple[re.Pattern[str], _Construct, str]]] = {"": [_CORE[_TAG_NULL]]}
    for tag, chars in starts.items():
        for char in chars:
            table.setdefault(char, []).append(_CORE[tag])
    return table


_IMPLICIT = _implicit_table()


def _plain_scalar(text: str) -> Any:
    """The value of an untagged plain scalar; ValueError if it cannot be converted."""
    for pattern, construct, what in _IMPLICIT.get(text[:1], ()):
        if pattern.fullmatch(text):
            try:
                return construct(text)
            except ValueError:
                raise ValueError(f"cannot read {shown(text)} as {what}") from None
    return text


def _tagged_scalar(tag: str, text: str) -> Any:
    """The value of a scalar with an explicit tag; ValueError if it does not fit the tag."""
    if tag in (_TAG_STR, _NON_SPECIFIC):
        return text
    core = _CORE.get(tag)
    if core is None:
        if tag in (_TAG_MAP, _TAG_SEQ):
            raise _UnsupportedTag(_misplaced_tag(tag, "a scalar"))
        raise _UnsupportedTag(unsupported_tag(tag))
    pattern, construct, what = core
    if pattern.fullmatch(text) is None:
        raise ValueError(f"cannot read {shown(text)} as {what}")
    try:
        return construct(text)
    except ValueError:
        raise ValueError(f"cannot read {shown(text)} as {what}") from None


class _UnsupportedTag(ValueError):
    """A tag manifests do not allow; reported as is (it is not a syntax error)."""


def _short_tag(tag: str) -> str:
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag.removeprefix(prefix) if tag.startswith(prefix) else tag


def unsupported_tag(tag: str) -> str:
    """The message for a tag manifests do not allow (``!!python/object``, ``!!binary``...)."""
    return (
        f"unsupported YAML tag '{_short_tag(tag)}' "
        "(manifests use plain mappings, lists and scalars)"
    )


@dataclass
class ParsedFile:
    """The documents of one file (``None`` for empty ones) and its problems."""

    documents: list[Any] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def decode(data: bytes) -> tuple[str | None, Problem | None]:
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


def parse(data: bytes) -> ParsedFile:
    """Parse every document of a file; problems carry 1-based line and column."""
    text, problem = decode(data)
    if text is None:
        assert problem is not None
        return ParsedFile(problems=[problem])
    builder = _Builder(text, record_positions=False)
    builder.run()
    return ParsedFile(documents=builder.documents, problems=builder.problems)


def _yaml_error(exc: yaml.MarkedYAMLError, text: str = "") -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or "invalid YAML"
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


class _Refused(Exception):
    """The file cannot be read on: stop at once, with this problem."""

    def __init__(self, mark: Any, message: str) -> None:
        super().__init__(message)
        self.problem: Problem = (*_position(mark), message)

    @classmethod
    def at_line(cls, line: int, message: str) -> _Refused:
        refused = cls(None, message)
        refused.problem = (line, 1, message)
        return refused


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _Open:
    """A mapping or sequence being read: one level of the builder's stack."""

    __slots__ = (
        "anchor",
        "container",
        "has_key",
        "is_map",
        "key",
        "key_mark",
        "merge",
        "merge_seen",
        "merges",
        "path",
        "start_nodes",
    )

    def __init__(
        self, container: Any, is_map: bool, anchor: str | None, start_nodes: int, path: FieldPath
    ) -> None:
        self.container = container
        self.is_map = is_map
        self.anchor = anchor
        self.start_nodes = start_nodes
        self.path = path
        self.key: Any = None  # mappings: the key read, awaiting its value
        self.has_key = False
        self.key_mark: Any = None
        self.merge = False  # that key is a merge key (a plain <<; a quoted '<<' is not)
        self.merge_seen = False
        self.merges: list[tuple[Any, Any]] = []  # (value, mark) of each merge key


_SCALAR_KEY_TYPES = (str, int, float, bool, type(None))


class _Builder:
    """Builds documents from libyaml's parser events, with limits and (optionally) positions.

    Anchors map to ``(value, size in nodes, is a merge key)``, or to the :class:`_Open`
    collection that carries them while it is being read (an alias to it is recursive).
    """

    def __init__(self, text: str, *, record_positions: bool) -> None:
        self.text = text
        self.record_positions = record_positions
        self.documents: list[Any] = []
        self.problems: list[Problem] = []
        # per document: path -> (line, col) of the value, and of the key that names it
        self.value_positions: list[dict[FieldPath, tuple[int, int]]] = []
        self.key_positions: list[dict[FieldPath, tuple[int, int]]] = []

    def run(self) -> None:
        parser = _Parser(self.text)
        try:
            self._build(parser)
        except _Refused as exc:
            self.problems.append(exc.problem)
        except yaml.MarkedYAMLError as exc:
            self.problems.append(_yaml_error(exc, self.text))
        except yaml.YAMLError as exc:
            self.problems.append((1, 1, f"invalid YAML: {exc}"))
        finally:
            parser.dispose()

    def _build(self, parser: Any) -> None:  # noqa: C901, PLR0912, PLR0915 - one hot loop
        # One loop with local names: this runs once per YAML node of every manifest.
        get_event = parser.get_event
        record = self.record_positions
        problems = self.problems
        stack: list[_Open] = []
        top: _Open | None = None
        anchors: dict[str, Any] = {}
        nodes = 0
        document: Any = None
        value_positions: dict[FieldPath, tuple[int, int]] = {}
        key_positions: dict[FieldPath, tuple[int, int]] = {}
        scalar_event, alias_event = yaml.ScalarEvent, yaml.AliasEvent
        mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
        mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
        document_start, document_end = yaml.DocumentStartEvent, yaml.DocumentEndEvent
        while True:
            event = get_event()
            kind = event.__class__
            if kind is scalar_event or kind is alias_event:
                nodes += 1
                if kind is scalar_event:
                    text, tag = event.value, event.tag
                    try:
                        if tag is None:
                            value = _plain_scalar(text) if event.implicit[0] else text
                        else:
                            value = _tagged_scalar(tag, text)
                    except ValueError as exc:
                        prefix = "" if isinstance(exc, _UnsupportedTag) else "invalid YAML: "
                        raise _Refused(event.start_mark, f"{prefix}{exc}") from None
                    is_merge = text == "<<" and (
                        tag == _TAG_MERGE or (tag is None and event.implicit[0])
                    )
                    if event.anchor is not None:
                        anchors[event.anchor] = (value, 1, is_merge)
                else:
                    entry = anchors.get(event.anchor)
                    if entry is None:
                        raise _Refused(event.start_mark, f"unknown alias '*{event.anchor}'")
                    if entry.__class__ is _Open:
                        raise _Refused(
                            event.start_mark,
                            f"alias '*{event.anchor}' inside the node it names"
                            " (recursive structures are not allowed)",
                        )
                    value, size, is_merge = entry
                if top is not None and top.is_map and not top.has_key:
                    # a mapping key
                    if not isinstance(value, _SCALAR_KEY_TYPES):
                        raise _Refused(event.start_mark, "mapping keys must be scalars")
                    # Duplicates are reported when the key is read, and reading goes on.
                    if is_merge:
                        if top.merge_seen:
                            problems.append((*_position(event.start_mark), "duplicate key '<<'"))
                        top.merge_seen = True
                    elif value in top.container:
                        problems.append(
                            (*_position(event.start_mark), f"duplicate key {shown(value)}")
                        )
                    top.key, top.key_mark, top.has_key, top.merge = (
                        value,
                        event.start_mark,
                        True,
                        is_merge,
                    )
                    continue
                if kind is alias_event:
                    nodes += size
                if nodes > MAX_NODES_PER_FILE:
                    raise _Refused(event.start_mark, _TOO_MANY_NODES)
                container: Any = value
                is_map = False
            elif kind is mapping_start or kind is sequence_start:
                nodes += 1
                is_map = kind is mapping_start
                if top is not None and top.is_map and not top.has_key:
                    raise _Refused(event.start_mark, "mapping keys must be scalars")
                if nodes > MAX_NODES_PER_FILE:
                    raise _Refused(event.start_mark, _TOO_MANY_NODES)
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(event.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
                tag = event.tag
                if (
                    tag is not None
                    and tag != _NON_SPECIFIC
                    and tag != (_TAG_MAP if is_map else _TAG_SEQ)
                ):
                    raise _Refused(event.start_mark, _collection_tag_problem(tag, is_map))
                container = {} if is_map else []
            elif kind is mapping_end or kind is sequence_end:
                closed = stack.pop()
                top = stack[-1] if stack else None
                if closed.merges:
                    _apply_merges(closed)
                anchor = closed.anchor
                if anchor is not None and anchors.get(anchor) is closed:
                    anchors[anchor] = (closed.container, nodes - closed.start_nodes + 1, False)
                continue
            elif kind is document_start:
                if len(self.documents) >= MAX_DOCUMENTS_PER_FILE:
                    raise _Refused.at_line(
                        event.start_mark.line + 1,
                        f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file",
                    )
                anchors = {}  # anchors are local to a document
                document = None
                if record:
                    value_positions, key_positions = {}, {}
                    self.value_positions.append(value_positions)
                    self.key_positions.append(key_positions)
                continue
            elif kind is document_end:
                self.documents.append(document)
                continue
            elif event is None or kind is yaml.StreamEndEvent:
                return
            else:
                continue  # stream start
            # A value (scalar, alias or new collection) goes into its parent.
            path: FieldPath = ()
            if top is None:
                document = container
            elif top.is_map:
                top.has_key = False
                key = top.key
                if record:
                    path = (*top.path, key)
                    key_positions[path] = _position(top.key_mark)
                if top.merge:
                    top.merges.append((container, event.start_mark))
                else:
                    top.container[key] = container
            else:
                if record:
                    path = (*top.path, len(top.container))
                top.container.append(container)
            if record:
                value_positions[path] = _position(event.start_mark)
            if kind is mapping_start or kind is sequence_start:
                opened = _Open(container, is_map, event.anchor, nodes, path if record else ())
                if event.anchor is not None:
                    anchors[event.anchor] = opened
                stack.append(opened)
                top = opened


_TOO_MANY_NODES = f"more than {MAX_NODES_PER_FILE} YAML nodes (alias expansion?); refused"


def _collection_tag_problem(tag: str, is_map: bool) -> str:
    if tag in (_TAG_MAP, _TAG_SEQ):
        return _misplaced_tag(tag, "a mapping" if is_map else "a sequence")
    return unsupported_tag(tag)


def _misplaced_tag(tag: str, node: str) -> str:
    return f"the tag '{_short_tag(tag)}' cannot be used on {node}"


def _apply_merges(mapping: _Open) -> None:
    """Fill a mapping's merge keys: its own keys win, then earlier mappings over later ones.

    (The merge key type, https://yaml.org/type/merge.html: the value is a mapping or a
    sequence of mappings.)
    """
    container = mapping.container
    for value, mark in mapping.merges:
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                raise _Refused(mark, "a merge key ('<<') takes a mapping or a list of mappings")
            for key, item in source.items():
                container.setdefault(key, item)


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
    """Run the builder with positions on; used only for files with problems."""
    text, _ = decode(data)
    if text is None:
        return PositionIndex([], [])
    builder = _Builder(text, record_positions=True)
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

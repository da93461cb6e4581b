"""Differential test: gitorch's YAML builder against an independent reading of the events.

Generated YAML mixes every construct that once changed meaning with the parse path
(issue 22): anchors and aliases on keys and values, redefined and unknown anchors, tags
(``!``, the core ones, unsupported ones, misplaced ones), merge keys, explicit keys, flow
and block styles, quoting styles, comments and several documents. The builder and the
reference (yaml_reference_helpers.py) must agree on every value and on every refusal:
its position and its message (libyaml's own syntax errors: position only, the wording is
gitorch's).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml_reference_helpers import Reference, comparable

from gitorch.manifests.yamlload import parse

PLAIN_TEXTS = [
    *("12", "-3", "+7", "0", "010", "0o17", "0o8", "0x1F", "0xG", "1_000"),
    *("1.5", "1e3", "-2.5E-3", ".5", "1.", ".inf", "-.Inf", "+.INF", ".nan", ".NaN"),
    *("true", "False", "TRUE", "tRuE", "yes", "no", "on", "off", "y"),
    *("null", "Null", "NULL", "~", "nil"),
    *("<<", "web", "app", "a b", "x12", "2001-12-14", "0.5.1", "-", "x-y"),
]
GOOD_TAGS = ["!", "!!str", "!!int", "!!float", "!!bool", "!!null"]
BAD_TAGS = ["!!binary", "!local", "!!map", "!!merge"]
ANCHORS = ["a", "b", "c"]
# Mostly the right one for the collection ("!" or !!map on a mapping...).
MAP_TAGS = ["!", "!!map", "!", "!!map", "!!seq", "!!set", "!custom"]
SEQ_TAGS = ["!", "!!seq", "!", "!!seq", "!!map", "!!set", "!custom"]
# Characters a plain scalar may hold anywhere (flow context included).
PLAIN_SAFE = re.compile(r"[A-Za-z0-9 ._~<+-]*")
FEATURES = {
    "anchor on key",
    "alias as key",
    "alias as value",
    "anchor redefined",
    "unknown alias",
    "tag !",
    "core tag",
    "unsupported tag",
    "collection tag",
    "merge key",
    "explicit key",
    "flow mapping",
    "flow sequence",
    "block mapping",
    "block sequence",
    "quoted",
    "comment",
    "several documents",
    "accepted",
    "refused",
}


@dataclass
class Scalar:
    text: str
    style: str  # plain, single, double
    tag: str | None = None
    anchor: str | None = None


@dataclass
class Alias:
    name: str


@dataclass
class Seq:
    items: list[Any]
    flow: bool
    tag: str | None = None
    anchor: str | None = None


@dataclass
class Map:
    pairs: list[tuple[Any, Any]]
    flow: bool
    explicit: list[bool] = field(default_factory=list)  # per pair: written as "? key"
    tag: str | None = None
    anchor: str | None = None


anchors = st.one_of(st.none(), st.none(), st.sampled_from(ANCHORS))


@st.composite
def scalars(draw: st.DrawFn) -> Scalar:
    text = draw(
        st.sampled_from(PLAIN_TEXTS)
        | st.text(alphabet="abcxyz019 :#&*!,[]{}'\"-?|>%@\\é", max_size=6)
    )
    style = draw(st.sampled_from(["plain", "plain", "plain", "single", "double"]))
    if style == "plain" and not PLAIN_SAFE.fullmatch(text):
        style = "double"
    tag = draw(
        st.one_of(
            *[st.none()] * 6,
            st.sampled_from(GOOD_TAGS),
            st.sampled_from(GOOD_TAGS),
            st.sampled_from(BAD_TAGS),
        )
    )
    return Scalar(text, style, tag, draw(anchors))


aliases = st.builds(Alias, st.sampled_from([*ANCHORS, "z"]))
# Few key names, so that keys collide: duplicates, and merged keys overridden.
common_keys = st.builds(
    Scalar, st.sampled_from(["app", "web", "x", "12"]), st.just("plain"), st.none(), anchors
)
keys = st.one_of(common_keys, common_keys, scalars(), aliases)
leaves = st.one_of(scalars(), scalars(), aliases)
map_tags = st.one_of(*[st.none()] * 6, st.sampled_from(MAP_TAGS))
seq_tags = st.one_of(*[st.none()] * 6, st.sampled_from(SEQ_TAGS))


def collections(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    seqs = st.builds(Seq, st.lists(children, max_size=4), st.booleans(), seq_tags, anchors)
    small_maps = st.builds(
        Map, st.lists(st.tuples(common_keys, leaves), max_size=3), st.just(True)
    ).map(lambda m: Map(m.pairs, True, [False] * len(m.pairs)))
    # A merge key's value: usually mappings (aliased or inline), sometimes not.
    merge_values = st.one_of(
        aliases,
        aliases,
        small_maps,
        st.builds(Seq, st.lists(aliases | small_maps, min_size=1, max_size=3), st.just(True)),
        children,
    )
    merge_pairs = st.tuples(st.just(Scalar("<<", "plain")), merge_values)
    pairs = st.one_of(
        st.tuples(keys, children),
        st.tuples(keys, children),
        st.tuples(keys, children),
        merge_pairs,
        st.tuples(children, children),  # a collection as a key: refused
    )

    @st.composite
    def maps(draw: st.DrawFn) -> Map:
        drawn = draw(st.lists(pairs, max_size=4))
        explicit = [draw(st.integers(0, 5)) == 0 for _ in drawn]
        flow = draw(st.booleans())
        return Map(drawn, flow, explicit, draw(map_tags), draw(anchors))

    return st.one_of(seqs, maps())


nodes = st.recursive(leaves, collections, max_leaves=10)


# ---------------------------------------------------------------- rendering


def scalar_text(node: Scalar) -> str:
    if node.style == "single":
        return "'" + node.text.replace("'", "''") + "'"
    if node.style == "double":
        return json.dumps(node.text, ensure_ascii=False)
    return node.text


def properties(node: Any) -> str:
    parts = []
    if getattr(node, "anchor", None):
        parts.append(f"&{node.anchor}")
    if getattr(node, "tag", None):
        parts.append(node.tag)
    return " ".join(parts)


def with_properties(node: Any, body: str) -> str:
    props = properties(node)
    return f"{props} {body}" if props else body


def flow(node: Any) -> str:
    if isinstance(node, Alias):
        return f"*{node.name}"
    if isinstance(node, Scalar):
        return with_properties(node, scalar_text(node))
    if isinstance(node, Seq):
        return with_properties(node, "[" + ", ".join(flow(item) for item in node.items) + "]")
    body = ", ".join(f"{flow_key(key)}: {flow(value)}" for key, value in node.pairs)
    return with_properties(node, "{" + body + "}")


def flow_key(node: Any) -> str:
    # "*a:" would be read as an alias named "a:" by a YAML 1.2 reader: keep a space.
    return f"{flow(node)} " if isinstance(node, Alias) else flow(node)


def inline(node: Any) -> bool:
    """Written on the line of its key or dash (a scalar, an alias or a flow collection)."""
    if isinstance(node, Scalar | Alias):
        return True
    return node.flow or not (node.items if isinstance(node, Seq) else node.pairs)


def block(node: Any, indent: int) -> list[str]:
    """Lines of a block collection whose properties are already written."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(node, Seq):
        for item in node.items:
            if inline(item):
                lines.append(f"{pad}- {flow(item)}")
            else:
                lines.append(f"{pad}- {properties(item)}".rstrip())
                lines.extend(block(item, indent + 2))
        return lines
    for (key, value), explicit in zip(node.pairs, node.explicit, strict=True):
        if explicit and inline(value):
            lines += [f"{pad}? {flow(key)}", f"{pad}: {flow(value)}"]
        elif inline(value):
            lines.append(f"{pad}{flow_key(key)}: {flow(value)}")
        else:
            lines.append(f"{pad}{flow_key(key)}: {properties(value)}".rstrip())
            lines.extend(block(value, indent + 2))
    return lines


def document(node: Any) -> list[str]:
    if inline(node):
        return [f"--- {flow(node)}"]
    head = f"--- {properties(node)}".rstrip()
    return [head, *block(node, 0)]


class Tidy:
    """Makes a drawn tree likelier to load: most aliases point at an anchor defined
    before them (in reading order), or become scalars where none is. In a clean example,
    also no refusals: no tags that do not fit, no collection keys, no recursive aliases,
    merge keys given mappings (aliased, inline, or a list of them)."""

    def __init__(self, draw: st.DrawFn, clean: bool) -> None:
        self.draw, self.clean = draw, clean
        self.kinds: dict[str, str] = {}  # anchor -> "map", "seq", "scalar", or "open ..."

    def anchors_of(self, *kinds: str) -> list[str]:
        return [name for name, kind in self.kinds.items() if kind in kinds]

    def node(self, node: Any, as_key: bool = False) -> Any:
        draw = self.draw
        if isinstance(node, Alias):
            wanted = ("scalar",) if as_key else ("scalar", "map", "seq")
            usable = self.anchors_of(*wanted) if self.clean else list(self.kinds)
            if node.name in usable or (not self.clean and draw(st.integers(0, 4)) == 0):
                return node
            if usable:
                return Alias(draw(st.sampled_from(usable)))
            return Scalar(draw(st.sampled_from(PLAIN_TEXTS)), "plain")
        if self.clean and isinstance(node, Seq | Map) and as_key:
            node = Scalar("x", "plain")
        if self.clean and node.tag is not None:
            fits = {"!", "!!str"} if isinstance(node, Scalar) else {"!"}
            fits.add("!!map" if isinstance(node, Map) else "!!seq")
            if node.tag not in fits:
                node.tag = None
        if isinstance(node, Scalar):
            if self.clean and as_key and node.text == "<<" and node.style == "plain":
                # A merge key (its value is seen to by the mapping), never aliased.
                node.tag = node.anchor = None
            if node.anchor:
                self.kinds[node.anchor] = "scalar"
            return node
        opened = f"open {id(node)}"
        if node.anchor:
            self.kinds[node.anchor] = opened
        if isinstance(node, Seq):
            node.items = [self.node(item) for item in node.items]
        else:
            pairs = []
            for key, value in node.pairs:
                key = self.node(key, as_key=True)
                merge = isinstance(key, Scalar) and key.text == "<<" and key.style == "plain"
                if self.clean and merge and key.tag is None:
                    value = self.merge_value(value)
                pairs.append((key, self.node(value)))
            node.pairs = pairs
        if node.anchor and self.kinds[node.anchor] == opened:  # else redefined inside
            self.kinds[node.anchor] = "map" if isinstance(node, Map) else "seq"
        return node

    def merge_value(self, value: Any) -> Any:
        """What a merge key may take: a mapping, or a list of mappings."""
        maps = self.anchors_of("map")
        if isinstance(value, Map):
            return value
        if isinstance(value, Alias) and value.name in maps:
            return value
        if isinstance(value, Seq) and value.items:
            value.items = [self.merge_value(item) for item in value.items]
            return value
        if maps:
            return Alias(self.draw(st.sampled_from(maps)))
        pairs = [(Scalar(k, "plain"), Scalar(v, "plain")) for k, v in (("app", "1"), ("x", "2"))]
        return Map(pairs, True, [False, False])


@st.composite
def yaml_texts(draw: st.DrawFn) -> tuple[str, list[Any]]:
    roots = draw(st.lists(nodes, min_size=1, max_size=3))
    # Most examples are meant to load, so that values are compared on rich documents.
    clean = draw(st.sampled_from([True, True, False]))
    roots = [Tidy(draw, clean).node(root) for root in roots]
    lines = [line for root in roots for line in document(root)]
    if len(roots) == 1 and draw(st.booleans()):
        lines[0] = lines[0].removeprefix("---").lstrip()  # an implicit document start
        if not lines[0]:
            lines.pop(0)
    # Comments: whole lines, and after a line (never inside a flow collection: they
    # sit on one line each).
    commented = []
    for line in lines:
        if draw(st.integers(0, 6)) == 0:
            indent = len(line) - len(line.lstrip())
            commented.append(" " * indent + "# & * a comment with an anchor and an alias")
        if draw(st.integers(0, 6)) == 0:
            line += " # note: &x *y"
        commented.append(line)
    return "\n".join(commented) + "\n", roots


# ---------------------------------------------------------------- features


def features(text: str, roots: list[Any]) -> set[str]:
    seen: set[str] = set()
    defined: set[str] = set()

    def walk(node: Any, as_key: bool = False) -> None:
        if isinstance(node, Alias):
            seen.add("alias as key" if as_key else "alias as value")
            if node.name not in defined:
                seen.add("unknown alias")
            return
        anchor = getattr(node, "anchor", None)
        if anchor:
            if anchor in defined:
                seen.add("anchor redefined")
            if as_key:
                seen.add("anchor on key")
            defined.add(anchor)
        tag = getattr(node, "tag", None)
        if isinstance(node, Scalar):
            if tag == "!":
                seen.add("tag !")
            elif tag in ("!!str", "!!int", "!!float", "!!bool", "!!null"):
                seen.add("core tag")
            elif tag is not None:
                seen.add("unsupported tag")
            if node.style != "plain":
                seen.add("quoted")
            if as_key and node.text == "<<" and node.style == "plain" and tag is None:
                seen.add("merge key")
            return
        if tag is not None:
            seen.add("collection tag")
        style = "flow" if node.flow else "block"
        if isinstance(node, Seq):
            seen.add(f"{style} sequence")
            for item in node.items:
                walk(item)
            return
        seen.add(f"{style} mapping")
        if any(node.explicit) and not node.flow:
            seen.add("explicit key")
        for key, value in node.pairs:
            walk(key, as_key=True)
            walk(value)

    for root in roots:
        defined.clear()
        walk(root)
    if "#" in text:
        seen.add("comment")
    if len(roots) > 1:
        seen.add("several documents")
    return seen


# ---------------------------------------------------------------- the property


def agree(text: str) -> bool:
    """Builder and reference agree on ``text``; True if it was accepted."""
    parsed = parse(text.encode())
    documents, problems = Reference(text).read()
    assert [comparable(d) for d in parsed.documents] == [comparable(d) for d in documents]
    libyaml = [(line, col) for line, col, message in problems if message == "<libyaml>"]
    if libyaml:
        # A syntax error: the same position, in gitorch's words.
        assert [(line, col) for line, col, _ in parsed.problems] == [
            (line, col) for line, col, _ in problems
        ]
        assert parsed.problems[-1][2].startswith("invalid YAML: ")
    else:
        assert parsed.problems == problems
    return not problems


def test_builder_agrees_with_an_independent_reading() -> None:
    seen: Counter[str] = Counter()

    # 500 examples take 10-20 s on a shared core; every construct shows up dozens of times
    # (checked below), and each of the defects of issue 22 was found within them.
    @settings(
        max_examples=500,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(yaml_texts())
    def check(case: tuple[str, list[Any]]) -> None:
        text, roots = case
        accepted = agree(text)
        seen.update(features(text, roots) | {"accepted" if accepted else "refused"})

    check()
    missing = FEATURES - set(seen)
    assert not missing, f"the generator never made: {sorted(missing)} ({dict(seen)})"

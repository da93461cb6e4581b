"""Field-level differences between two canonical objects, secrets redacted at the source.

Paths are dotted in the manifest's own spelling: ``spec.image``, ``spec.env.API_URL``,
``spec.ports[http].containerPort``. List items that have a ``name`` are keyed by it (so a
reordered or renamed port reads as what it is); other lists of mappings are keyed by
index; lists of scalars (command, args, dependsOn) compare as one value.

Redaction happens here, before any renderer sees a value: an env var whose name looks
secret (PASSWORD, TOKEN, SECRET, API_KEY, ...) or that comes from a ``secretFile`` never
has its value in a :class:`FieldChange`, only ``"(sensitive value)"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, overload

SENSITIVE = "(sensitive value)"
_SECRET_NAME = re.compile(
    r"(PASSW(OR)?D|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH|COOKIE|SESSION_KEY|DSN)",
    re.IGNORECASE,
)


@lru_cache(maxsize=4096)
def is_sensitive_name(name: str) -> bool:
    """Whether an env var name suggests its value is a secret. Remembered per name: the
    services of a repo share their env names, and a first plan asks about every env leaf
    twice (2,000 Services: ~8,000 searches of the pattern for a handful of names)."""
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class FieldChange:
    """One changed leaf: ``op`` is add, remove or change; values are JSON-ready."""

    op: str
    path: str
    before: Any = None
    after: Any = None
    sensitive: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op != "add":
            out["before"] = self.before
        if self.op != "remove":
            out["after"] = self.after
        if self.sensitive:
            out["sensitive"] = True
        return out


def _is_named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in value)
        and len({item["name"] for item in value}) == len(value)
    )


def _named_or_empty(value: Any) -> bool:
    """A list of mappings keyed by a unique ``name``, or an empty list (the first item
    added to a list of named ones is shown by its name: ``spec.volumes[data].mountPath``)."""
    return value == [] or _is_named_list(value)


def _dicts_or_empty(value: Any) -> bool:
    """A list of mappings only (or an empty list): diffed item by item, by position."""
    return isinstance(value, list) and all(isinstance(i, dict) for i in value)


#: Paths under which :func:`_redact` may change a value.
_REDACTED = ("spec.env", "spec.secrets")


def _redact(path: str, value: Any) -> tuple[Any, bool]:
    """Redact env values whose name looks secret (a ``secretFile`` name is not a secret),
    and the digest of every secret value (a rotation shows as a sensitive change)."""
    if not path.startswith(_REDACTED):
        return value, False  # most leaves: nothing below can apply (a first plan has ~10^5)
    parts = path.split(".")
    if parts[-1] == "digest" and (parts[:2] == ["spec", "env"] or path.startswith("spec.secrets")):
        return (SENSITIVE if value is not None else None), True
    if len(parts) < 3 or parts[:2] != ["spec", "env"] or not is_sensitive_name(parts[2]):
        return value, False
    if parts[3:4] == ["secretFile"] or isinstance(value, dict):
        return value, False
    return (SENSITIVE if value is not None else None), True


@lru_cache(maxsize=4096)
def _redacted_path(path: str) -> bool:
    """Whether a leaf at ``path`` is shown redacted when added or removed (what
    ``_change`` against nothing marks sensitive: ``_redact(path, value)`` is secret only
    where ``_redact(path, None)`` is). Remembered per path: the services of a repo share
    their env names, and a first plan asks about every env leaf."""
    return _redact(path, None)[1]


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """Every leaf of ``value`` with its path (for whole objects added or removed)."""
    paths: list[str] = []
    values: list[Any] = []
    _collect(value, path, paths, values)
    return list(zip(paths, values, strict=True))


#: Values that are leaves whatever their place: appended without a call per leaf.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _list_form(value: list[Any]) -> str:
    """How a non-empty list's leaves are spelled: ``value`` (one leaf: scalars, or
    anything but mappings throughout), ``named`` (mappings keyed by a unique ``name``:
    ``path[name].key``) or ``indexed`` (other mappings: ``path[0].key``)."""
    if not all(isinstance(item, dict) for item in value):
        return "value"
    if all(isinstance(item.get("name"), str) for item in value) and len(
        {item["name"] for item in value}
    ) == len(value):
        return "named"
    return "indexed"


def _collect(value: Any, path: str, paths: list[str], values: list[Any]) -> None:
    """Append every leaf of ``value``: its path to ``paths``, its value to ``values``.

    Two flat lists filled in place, not nested generators nor a (path, value) pair per
    leaf: a first plan adds every leaf of every object (~10^5 for 2,000 Services), and
    each generator level or object made costs per leaf; the callers zip them into what
    they show (pairs for text, each leaf's dict for JSON). The leaves of a mapping
    (scalars, and the empty mappings and lists that a canonical object has a dozen of)
    are appended by the loop in :func:`_collect_items` without a call of their own; a
    list is looked at once to tell named items, indexed mappings, a value."""
    if isinstance(value, dict) and value:
        _collect_items(value.items(), f"{path}." if path else "", paths, values)
    elif isinstance(value, list) and value:
        form = _list_form(value)
        if form == "value":
            paths.append(path)
            values.append(value)
        elif form == "named":
            for item in value:
                at = f"{path}[{item['name']}]"
                rest = [(k, v) for k, v in item.items() if k != "name"]
                if rest:
                    _collect_items(rest, f"{at}.", paths, values)
                else:
                    paths.append(at)
                    values.append({})
        else:
            for index, item in enumerate(value):
                _collect(item, f"{path}[{index}]", paths, values)
    else:
        paths.append(path)
        values.append(value)


def _collect_items(
    items: Iterable[tuple[Any, Any]], prefix: str, paths: list[str], values: list[Any]
) -> None:
    """The leaves of a non-empty mapping's ``items``, their keys spelled after ``prefix``."""
    add_path, add_value = paths.append, values.append
    for key, item in items:
        kind = type(item)
        if kind in _SCALARS or ((kind is dict or kind is list) and not item):
            add_path(f"{prefix}{key}")
            add_value(item)
        else:
            _collect(item, f"{prefix}{key}", paths, values)


def _change(op: str, path: str, before: Any, after: Any) -> FieldChange:
    red_before, sens_b = _redact(path, before)
    red_after, sens_a = _redact(path, after)
    return FieldChange(op, path, red_before, red_after, sens_b or sens_a)


def diff_values(before: Any, after: Any, path: str = "") -> Iterator[FieldChange]:
    """Leaf-level changes turning ``before`` into ``after``."""
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in before:
                for leaf, value in _leaves(after[key], sub):
                    yield _change("add", leaf, None, value)
            elif key not in after:
                for leaf, value in _leaves(before[key], sub):
                    yield _change("remove", leaf, value, None)
            else:
                yield from diff_values(before[key], after[key], sub)
        return
    if _named_or_empty(before) and _named_or_empty(after):
        old = {item["name"]: item for item in before}
        new = {item["name"]: item for item in after}
        for name in [*(n for n in old if n in new), *(n for n in new if n not in old)]:
            sub = f"{path}[{name}]"
            if name not in old:
                for leaf, value in _leaves(
                    {k: v for k, v in new[name].items() if k != "name"}, sub
                ):
                    yield _change("add", leaf, None, value)
            else:
                yield from diff_values(old[name], new[name], sub)
        for name in old:
            if name not in new:
                for leaf, value in _leaves(
                    {k: v for k, v in old[name].items() if k != "name"}, f"{path}[{name}]"
                ):
                    yield _change("remove", leaf, value, None)
        return
    if _dicts_or_empty(before) and _dicts_or_empty(after):
        # By position, as Terraform shows a list: an item added or removed at the end
        # is that item's own leaves, not the whole list before and after on one line.
        for index in range(max(len(before), len(after))):
            sub = f"{path}[{index}]"
            if index >= len(before):
                for leaf, value in _leaves(after[index], sub):
                    yield _change("add", leaf, None, value)
            elif index >= len(after):
                for leaf, value in _leaves(before[index], sub):
                    yield _change("remove", leaf, value, None)
            else:
                yield from diff_values(before[index], after[index], sub)
        return
    yield _change("change", path, before, after)


def diff_objects(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[FieldChange]:
    """Changes between two canonical objects (metadata and spec; None = absent)."""

    def essence(obj: Mapping[str, Any] | None) -> dict[str, Any]:
        if obj is None:
            return {}
        return {"metadata": obj.get("metadata", {}), "spec": obj.get("spec", {})}

    return list(diff_values(essence(before), essence(after)))


class Leaves(Sequence[FieldChange]):
    """Every leaf of an object created (op ``add``) or deleted (op ``remove``): what
    :func:`diff_objects` gives against nothing, in the same order with the same redaction.
    The object is walked when its leaves are first read, not when the plan is made, and
    then only into what the reader needs: the JSON (:meth:`to_json`) walks it straight
    into each leaf's dict, text and the rest into (path, shown value) pairs and the
    indexes of the sensitive ones (kept), and :class:`FieldChange` objects are made only
    when read one by one. A first plan of 2,000 Services has ~10^5 such leaves: diffing
    each against nothing and making an object of it took a sixth of ``gitorch plan``'s
    CPU, and the pairs only to make the JSON's dicts from them another ~3%."""

    __slots__ = ("op", "_obj", "_walked")

    def __init__(self, op: str, obj: Mapping[str, Any]) -> None:
        self.op = op
        self._obj = obj
        self._walked: tuple[list[tuple[str, Any]], frozenset[int]] | None = None

    def _walk(self) -> tuple[list[tuple[str, Any]], frozenset[int]]:
        walked = self._walked
        if walked is None:
            walked = self._walked = _object_pairs(self._obj)
        return walked

    def _change(self, index: int) -> FieldChange:
        pairs, sensitive_indexes = self._walk()
        path, value = pairs[index]
        sensitive = index in sensitive_indexes
        if self.op == "add":
            return FieldChange("add", path, None, value, sensitive)
        return FieldChange("remove", path, value, None, sensitive)

    def __len__(self) -> int:
        return len(self._walk()[0])

    @overload
    def __getitem__(self, index: int) -> FieldChange: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[FieldChange, ...]: ...

    def __getitem__(self, index: int | slice) -> FieldChange | tuple[FieldChange, ...]:
        if isinstance(index, slice):
            return tuple(self._change(i) for i in range(len(self))[index])
        return self._change(range(len(self))[index])

    def __iter__(self) -> Iterator[FieldChange]:
        return (self._change(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Leaves):
            return self.op == other.op and self._walk() == other._walk()
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Leaves({self.op!r}, {len(self)} leaves)"

    @property
    def pairs(self) -> list[tuple[str, Any]]:
        """(path, shown value) of every leaf, in order (read only)."""
        return self._walk()[0]

    @property
    def sensitive(self) -> frozenset[int]:
        """The indexes in :attr:`pairs` of the redacted leaves."""
        return self._walk()[1]

    def shown(self) -> Iterator[tuple[str, Any, bool]]:
        """(path, shown value, sensitive) of every leaf, in order, without the objects."""
        pairs, sensitive = self._walk()
        if not sensitive:
            return ((path, value, False) for path, value in pairs)
        return ((path, value, i in sensitive) for i, (path, value) in enumerate(pairs))

    def to_json(self) -> list[dict[str, Any]]:
        """``[change.to_json() for change in self]``, without the objects (nor, for a
        create whose leaves were not read otherwise before, the pairs: each such call
        walks the object)."""
        op = self.op
        if self._walked is None and op == "add":  # (a create: the common bulk)
            return _object_json(self._obj)
        side = "after" if op == "add" else "before"
        pairs, sensitive = self._walk()
        out = [{"op": op, "path": path, side: value} for path, value in pairs]
        for index in sensitive:
            out[index]["sensitive"] = True
        return out


def object_leaves(obj: Mapping[str, Any], op: str) -> Leaves:
    """``diff_objects(None, obj)`` (op ``add``) or ``diff_objects(obj, None)`` (op
    ``remove``), walked once (when first read) instead of diffed leaf by leaf against
    nothing. ``obj`` is read then: it must not change meanwhile (canonical objects do not)."""
    return Leaves(op, obj)


def _object_pairs(obj: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], frozenset[int]]:
    """(path, shown value) of every leaf of ``obj``, and the indexes of the redacted ones."""
    paths, values, sensitive = _object_leaves(obj)
    return list(zip(paths, values, strict=True)), sensitive


def _object_json(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """:func:`_object_pairs` as each leaf's JSON as an added field, without the pairs."""
    paths, values, sensitive = _object_leaves(obj)
    found = [{"op": "add", "path": p, "after": v} for p, v in zip(paths, values, strict=True)]
    for index in sensitive:
        found[index]["sensitive"] = True
    return found


def _object_leaves(obj: Mapping[str, Any]) -> tuple[list[str], list[Any], frozenset[int]]:
    """The paths and shown values of every leaf of ``obj``, and the indexes of the
    redacted ones."""
    paths: list[str] = []
    values: list[Any] = []
    _collect(obj.get("metadata", {}), "metadata", paths, values)
    spec = obj.get("spec", {})
    if not (isinstance(spec, dict) and spec):
        _collect(spec, "spec", paths, values)
        return paths, values, frozenset()
    sensitive: list[int] = []
    add_path, add_value = paths.append, values.append
    for key, item in spec.items():
        path = f"spec.{key}"
        # Only leaves under spec.env and spec.secrets can be redacted: every leaf of this
        # key's subtree starts with ``path``, so the prefix test is made once per key.
        if path.startswith(_REDACTED):
            start = len(paths)
            _collect(item, path, paths, values)
            for index in range(start, len(paths)):
                leaf = paths[index]
                if _redacted_path(leaf):  # as _change against nothing
                    values[index] = _redact(leaf, values[index])[0]
                    sensitive.append(index)
            continue
        kind = type(item)
        if kind in _SCALARS or ((kind is dict or kind is list) and not item):
            add_path(path)
            add_value(item)
        else:
            _collect(item, path, paths, values)
    return paths, values, frozenset(sensitive)


def diff_json(diff: Sequence[FieldChange]) -> list[dict[str, Any]]:
    """The JSON of a list of field changes (``Leaves`` without making their objects)."""
    if isinstance(diff, Leaves):
        return diff.to_json()
    return [change.to_json() for change in diff]


def redacted_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """An env mapping safe to show."""
    return {
        k: (SENSITIVE if is_sensitive_name(k) and not isinstance(v, dict) else v)
        for k, v in env.items()
    }

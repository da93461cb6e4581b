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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SENSITIVE = "(sensitive value)"
_SECRET_NAME = re.compile(
    r"(PASSW(OR)?D|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH|COOKIE|SESSION_KEY|DSN)",
    re.IGNORECASE,
)


def is_sensitive_name(name: str) -> bool:
    """Whether an env var name suggests its value is a secret."""
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


def _is_dict_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)


def _redact(path: str, value: Any) -> tuple[Any, bool]:
    """Redact env values whose name looks secret (a ``secretFile`` name is not a secret),
    and the digest of every secret value (a rotation shows as a sensitive change)."""
    if not path.startswith(("spec.env", "spec.secrets")):
        return value, False  # most leaves: nothing below can apply (a first plan has ~10^5)
    parts = path.split(".")
    if parts[-1] == "digest" and (parts[:2] == ["spec", "env"] or path.startswith("spec.secrets")):
        return (SENSITIVE if value is not None else None), True
    if len(parts) < 3 or parts[:2] != ["spec", "env"] or not is_sensitive_name(parts[2]):
        return value, False
    if parts[3:4] == ["secretFile"] or isinstance(value, dict):
        return value, False
    return (SENSITIVE if value is not None else None), True


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """Every leaf of ``value`` with its path (for whole objects added or removed)."""
    found: list[tuple[str, Any]] = []
    _collect_leaves(value, path, found)
    return found


def _collect_leaves(value: Any, path: str, found: list[tuple[str, Any]]) -> None:
    # One list filled in place, not nested generators: a first plan adds every leaf of
    # every object (~10^5 for 2,000 Services), and each generator level costs per leaf.
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _collect_leaves(item, f"{path}.{key}" if path else str(key), found)
    elif _is_named_list(value):
        for item in value:
            _collect_leaves(
                {k: v for k, v in item.items() if k != "name"}, f"{path}[{item['name']}]", found
            )
    elif _is_dict_list(value):
        for index, item in enumerate(value):
            _collect_leaves(item, f"{path}[{index}]", found)
    else:
        found.append((path, value))


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
    if _is_named_list(before) and _is_named_list(after):
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
    if _is_dict_list(before) and _is_dict_list(after) and len(before) == len(after):
        for index, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from diff_values(b, a, f"{path}[{index}]")
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


def redacted_env(env: Mapping[str, Any]) -> dict[str, Any]:
    """An env mapping safe to show."""
    return {
        k: (SENSITIVE if is_sensitive_name(k) and not isinstance(v, dict) else v)
        for k, v in env.items()
    }

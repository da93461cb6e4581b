"""JSON Schema validation of manifest documents against ``schemas/`` (draft 2020-12).

The schema files are the single source of truth. Two validators read them:

* a compiled one (fastjsonschema) that answers "valid?" six times faster than jsonschema
  and so keeps loading within reach of the bare YAML parse (see ``bench/``);
* jsonschema's Draft202012Validator, which runs only on documents the first one rejects,
  and reports *every* error with its path, turned here into messages a person can act on.

A property test checks that both validators agree on generated documents.

Every command that loads manifests pays for the compiled validator at start-up: turning
the Service schema into Python source and compiling that source takes ~0.1 s, as much as
all of gitorch's imports. The compiled code object is therefore cached on disk (like
Python's own ``__pycache__``), keyed by the schemas' bytes, fastjsonschema's version and
the interpreter's; jsonschema, needed only to explain a rejected document, is imported
only then.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import marshal
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any

import fastjsonschema

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

from gitorch.manifests.yamlload import MAX_SHOWN, FieldPath, shown

KINDS = ("Service", "Node", "Volume", "Secret", "NodePool")
API_VERSION = "gitorch.dev/v1"
_SCHEMA_FILES = {
    "Service": "service.schema.json",
    "Node": "node.schema.json",
    "Volume": "volume.schema.json",
    "Secret": "secret.schema.json",
    "NodePool": "nodepool.schema.json",
}
_COMMON = "common.schema.json"


@dataclass(frozen=True)
class SchemaProblem:
    """One schema violation: where (field path), what, and whether it is about a key."""

    path: FieldPath
    message: str
    at_key: bool = False  # point at the key (unknown field) rather than the value


def schema_dir() -> Path:
    """The folder holding the JSON Schemas: packaged copy, else the source tree's."""
    packaged = resources.files("gitorch").joinpath("_schemas")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "schemas"


@cache
def _load_all() -> dict[str, dict[str, Any]]:
    folder = schema_dir()
    names = [_COMMON, *_SCHEMA_FILES.values()]
    return {name: json.loads((folder / name).read_text(encoding="utf-8")) for name in names}


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource

    return Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in _load_all().values()
    )


#: An unescaped ``$``: in a JSON Schema pattern (ECMA-262) it ends the input, while
#: Python's ``$`` also matches before a final newline, so ``"web\n"`` would pass
#: ``^[a-z]+$``. fastjsonschema reads ``$`` as ``\Z``; the explaining validator must too,
#: or it finds nothing to say about a document the gate refused.
_DOLLAR = re.compile(r"(?<!\\)\$")


@cache
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(_DOLLAR.sub(r"\\Z", pattern))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _detailed(kind: str) -> Any:
    from jsonschema import Draft202012Validator, validators

    explainer = validators.extend(Draft202012Validator, {"pattern": _pattern})
    return explainer(_load_all()[_SCHEMA_FILES[kind]], registry=_registry())


@cache
def _compiled(kind: str) -> Any:
    name, code = _validator_code(kind)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - fastjsonschema's code for our own schemas
    return namespace[name]


_FIRST_FUNCTION = re.compile(r"^def (\w+)\(", re.MULTILINE)


def _validator_code(kind: str) -> tuple[str, CodeType]:
    """fastjsonschema's validator for ``kind``: (function name, code object), from the
    cache when the schemas, fastjsonschema and the interpreter are the ones it was made
    with, else generated, compiled and cached."""
    schemas = _load_all()
    key = hashlib.sha256(
        json.dumps([kind, fastjsonschema.VERSION, sys.version, schemas], sort_keys=True).encode()
    ).hexdigest()[:32]
    folder = _cache_dir()
    path = folder / f"{kind.lower()}-{key}.marshal" if folder is not None else None
    if path is not None:
        try:
            name, code = marshal.loads(path.read_bytes())
            if isinstance(name, str) and isinstance(code, CodeType):
                return name, code
        except (OSError, EOFError, ValueError, TypeError):
            pass  # absent or unreadable: generate it again
    by_id = {schema["$id"]: schema for schema in schemas.values()}
    source = fastjsonschema.compile_to_code(
        schemas[_SCHEMA_FILES[kind]], handlers={"https": by_id.__getitem__}
    )
    # The generated module defines the schema's own function first, then its $refs'.
    first = _FIRST_FUNCTION.search(source)
    if first is None:
        raise RuntimeError(f"fastjsonschema generated no function for the {kind} schema")
    entry = (first.group(1), compile(source, f"<{kind} schema>", "exec"))
    if path is not None:
        _write_atomically(path, marshal.dumps(entry))
    return entry


def _cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/gitorch/schemas`` (``~/.cache/...``), made private to this user;
    None when it cannot be made or is writable by anyone else (its code is executed)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = Path(base) / "gitorch" / "schemas"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
    except OSError:
        return None
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    return folder


def _write_atomically(path: Path, data: bytes) -> None:
    import tempfile

    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError:
        return  # a cache that cannot be written only costs the next start its compile


def is_valid(kind: str, document: dict[str, Any]) -> bool:
    """Fast yes/no answer from the compiled validator."""
    try:
        _compiled(kind)(document)
    except fastjsonschema.JsonSchemaException:
        return False
    except (RecursionError, TypeError, ValueError):
        return False  # let the detailed validator explain
    return True


def problems(kind: str, document: dict[str, Any]) -> list[SchemaProblem]:
    """Every schema violation of ``document``, with messages for people."""
    found: list[SchemaProblem] = []
    for error in _detailed(kind).iter_errors(document):
        found.extend(_explain(error))
    return found


#: What an ``anyOf`` of the schemas means, by where it is in them.
_ANY_OF_MESSAGES = {
    ("properties", "spec", "anyOf"): "a Service needs an image (docker) or a command (process)",
}


def _explain(error: ValidationError) -> Iterator[SchemaProblem]:
    path: FieldPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    validator = error.validator
    instance = error.instance
    if validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        for key in instance:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                yield SchemaProblem((*path, key), f"unknown field {shown(key)}{hint}", at_key=True)
        return
    if validator == "anyOf":
        said = _ANY_OF_MESSAGES.get(tuple(error.relative_schema_path))
        if said is not None:
            yield SchemaProblem(path, said)
            return
    if validator == "required":
        missing = [name for name in error.validator_value if name not in instance]
        for name in missing:
            yield SchemaProblem(path, f"missing required field '{name}'")
        return
    titled = _titled_schema(error)
    if titled is not None:
        title, description = titled
        yield SchemaProblem(path, f"invalid {title} {shown(instance)}: expected {description}")
        return
    if validator == "enum":
        options = ", ".join(str(v) for v in error.validator_value)
        yield SchemaProblem(path, f"{shown(instance)} is not one of: {options}")
        return
    if validator == "const":
        yield SchemaProblem(path, f"must be {error.validator_value!r}, not {shown(instance)}")
        return
    if validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else expected
        yield SchemaProblem(path, f"must be {_article(expected_text)}, not {_type_name(instance)}")
        return
    if validator in ("minProperties", "maxProperties") and "description" in schema:
        yield SchemaProblem(path, f"must have {schema['description']}")
        return
    if validator == "minimum":
        yield SchemaProblem(
            path, f"must be at least {error.validator_value} (got {shown(instance)})"
        )
        return
    if validator == "maximum":
        yield SchemaProblem(
            path, f"must be at most {error.validator_value} (got {shown(instance)})"
        )
        return
    if validator == "maxLength":
        limit = error.validator_value
        yield SchemaProblem(path, f"{shown(instance)} is too long (at most {limit} characters)")
        return
    if validator == "minLength":
        least = error.validator_value
        text = "must not be empty" if least == 1 else f"must have at least {least} characters"
        yield SchemaProblem(path, text)
        return
    if validator == "pattern":
        yield SchemaProblem(path, f"{shown(instance)} does not match {error.validator_value}")
        return
    # jsonschema's own wording echoes the whole value: cut it like the messages above.
    message = error.message
    if len(message) > 4 * MAX_SHOWN:
        message = message[: 4 * MAX_SHOWN - 1] + "…"
    yield SchemaProblem(path, message)


def _titled_schema(error: ValidationError) -> tuple[str, str] | None:
    """Errors inside a titled definition (duration, cpu quantity, name...) speak its language."""
    candidates = [error.schema, *(getattr(e, "schema", None) for e in error.context or ())]
    for schema in candidates:
        if isinstance(schema, dict) and "title" in schema and "description" in schema:
            return str(schema["title"]), str(schema["description"])
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _article(type_text: str) -> str:
    names = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean",
        "null": "null",
    }
    return " or ".join(names.get(part.strip(), part) for part in type_text.split(" or "))

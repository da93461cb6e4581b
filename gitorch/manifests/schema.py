"""JSON Schema validation of manifest documents against ``schemas/`` (draft 2020-12).

The schema files are the single source of truth. Two validators read them:

* a compiled one (fastjsonschema) that answers "valid?" six times faster than jsonschema
  and so keeps loading within reach of the bare YAML parse (see ``bench/``);
* jsonschema's Draft202012Validator, which runs only on documents the first one rejects,
  and reports *every* error with its path, turned here into messages a person can act on.

A property test checks that both validators agree on generated documents.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

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
    if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Explainer = validators.extend(Draft202012Validator, {"pattern": _pattern})


@cache
def _detailed(kind: str) -> Any:
    return _Explainer(_load_all()[_SCHEMA_FILES[kind]], registry=_registry())


@cache
def _compiled(kind: str) -> Any:
    by_id = {schema["$id"]: schema for schema in _load_all().values()}
    return fastjsonschema.compile(
        _load_all()[_SCHEMA_FILES[kind]], handlers={"https": by_id.__getitem__}
    )


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

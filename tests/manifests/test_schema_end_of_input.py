"""A JSON Schema pattern's `$` ends the input (ECMA-262); Python's `$` also matches before
a final newline. Both validators must read it the schema's way, so a value with a trailing
newline is refused *and* explained, and a match rule's header or cookie name (which a data
plane writes into HAProxy's configuration) must be an HTTP token."""

from __future__ import annotations

from typing import Any

from gitorch.manifests import schema as manifest_schema


def service(name: str = "web", rule: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "shop/web:1"}
    if rule is not None:
        spec["strategy"] = {"type": "ABTest", "abTest": {"match": [rule], "duration": "1m"}}
    return {
        "apiVersion": "gitorch.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }


def messages(document: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in problem.path)}: {problem.message}"
        for problem in manifest_schema.problems("Service", document)
    ]


def test_a_trailing_newline_is_refused_and_explained() -> None:
    document = service("web\n")
    assert not manifest_schema.is_valid("Service", document)
    assert messages(document) == [
        "metadata.name: invalid name 'web\\n': expected DNS-1123 label: lower-case letters,"
        " digits and '-', at most 63 characters"
    ]


def test_rule_names_are_http_tokens() -> None:
    for rule in (
        {"header": {"name": "X-Variant\n", "exact": "b"}},
        {"header": {"name": "X Variant", "exact": "b"}},
        {"cookie": {"name": "variant;x", "exact": "b"}},
        # a token character, but one HAProxy's configuration cannot take unquoted
        {"header": {"name": "X-It's", "exact": "b"}},
    ):
        document = service(rule=rule)
        assert not manifest_schema.is_valid("Service", document), rule
        (message,) = messages(document)
        assert "expected an HTTP token" in message, message
    for rule in (
        {"header": {"name": "X-Variant", "exact": "b"}},
        {"cookie": {"name": "ab_group.v2", "exact": "b"}},
    ):
        assert messages(service(rule=rule)) == [], rule

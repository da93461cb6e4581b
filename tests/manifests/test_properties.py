"""Property tests: whatever the input, the loader answers with state or clean diagnostics.

Also: the two JSON Schema validators agree, recording positions changes no value, and
digests depend on meaning, not spelling. (The YAML builder against an independent
reference: test_yaml_reference.py.)
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from manifest_helpers import load, make_file

from gitorch.manifests import LoadResult, Service
from gitorch.manifests import schema as manifest_schema
from gitorch.manifests.yamlload import _Builder, parse

# Each property stays well under 10 s on a slow CI core.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_clean(result: LoadResult, paths: set[str]) -> None:
    """The only outcomes: a state and no diagnostics, or positioned diagnostics."""
    assert isinstance(result, LoadResult)
    if result.state is not None:
        assert result.diagnostics == ()
        return
    assert result.diagnostics
    for diagnostic in result.diagnostics:
        assert diagnostic.path in paths
        assert diagnostic.line >= 1
        assert diagnostic.column >= 1
        assert diagnostic.message
    assert list(result.diagnostics) == sorted(result.diagnostics)


# ---------------------------------------------------------------- arbitrary input

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
keys = st.text(max_size=12) | st.sampled_from(
    ["apiVersion", "kind", "metadata", "name", "spec", "image", "replicas", "ports", "<<"]
)
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few characters inserted or deleted at random places."""
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        if draw(st.booleans()) and text:
            text = text[:position] + text[position + 1 :]
        else:
            char = draw(st.sampled_from(list(":-[]{}&*!|>'\"#?,\t\n %@`") + ["\x00", "é"]))
            text = text[:position] + char + text[position:]
    return text


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    documents = draw(st.lists(nested, min_size=1, max_size=3))
    text = yaml.safe_dump_all(documents, default_flow_style=draw(st.sampled_from([None, True])))
    return draw(mutated(text))


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_clean(load([make_file("a.yaml", data)]), {"a.yaml"})


@FAST
@given(yaml_texts())
def test_arbitrary_yaml_text(text: str) -> None:
    assert_clean(
        load([make_file("dir/a.yml", text.encode("utf-8", "surrogatepass"))]), {"dir/a.yml"}
    )


@FAST
@given(st.lists(nested, min_size=1, max_size=3))
def test_recording_positions_changes_no_value(documents: list[Any]) -> None:
    # The position index (built only for files with diagnostics) reads the same values.
    text = yaml.safe_dump_all(documents)
    parsed = parse(text.encode())
    indexed = _Builder(text, record_positions=True)
    indexed.run()
    assert parsed.problems == indexed.problems
    if not parsed.problems:
        assert parsed.documents == indexed.documents


# ---------------------------------------------------------------- near-valid Services

names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
# "web\n": Python's `$` matches before a final newline, a JSON Schema pattern's does not.
junk = st.sampled_from(
    [None, -1, 0, 1.5, "", "x y", "Bad_Name", [], {}, True, "250mc", "1Gb", "web\n", "1s\n"]
)


@st.composite
def services(draw: st.DrawFn) -> dict[str, Any]:
    """A Service document that mostly follows the schema."""
    port_names = draw(st.lists(names, min_size=0, max_size=3, unique=True))
    spec: dict[str, Any] = {"image": draw(st.sampled_from(["shop/web:1", "api:2.0", "db"]))}
    if draw(st.booleans()):
        spec["replicas"] = draw(st.integers(min_value=0, max_value=20))
    if port_names:
        spec["ports"] = [
            {"name": n, "containerPort": draw(st.integers(min_value=1, max_value=65535))}
            for n in port_names
        ]
        if draw(st.booleans()):
            spec["expose"] = {
                "port": draw(st.integers(min_value=1, max_value=65535)),
                "targetPort": draw(st.sampled_from(port_names)),
            }
    if draw(st.booleans()):
        spec["resources"] = {
            "requests": {
                "cpu": draw(st.sampled_from(["100m", "0.5", 1, "2", 0.25])),
                "memory": draw(st.sampled_from(["64Mi", "1Gi", "500M", 1024])),
            },
            "limits": {"cpu": draw(st.sampled_from(["1", "2", 4]))},
        }
    if draw(st.booleans()):
        spec["env"] = draw(
            st.dictionaries(
                st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,6}\Z"),
                st.text(max_size=5) | st.integers() | st.booleans(),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        spec["strategy"] = draw(
            st.sampled_from(
                [
                    {"type": "Recreate"},
                    {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                    {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                    },
                    {"type": "Canary", "canary": {"steps": [{"setWeight": 10}, {"pause": {}}]}},
                    {"type": "BlueGreen", "blueGreen": {"autoPromotionSeconds": 30}},
                ]
            )
        )
    if draw(st.booleans()):
        spec["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": draw(st.sampled_from([*port_names, 8080]))},
            "periodSeconds": draw(st.integers(min_value=1, max_value=10)),
        }
    doc: dict[str, Any] = {
        "apiVersion": "gitorch.dev/v1",
        "kind": "Service",
        "metadata": {"name": draw(names)},
        "spec": spec,
    }
    # Sometimes break it: one field replaced by junk, or an unknown field added.
    breakage = draw(st.sampled_from(["none", "none", "junk", "unknown", "drop"]))
    if breakage != "none":
        target = draw(st.sampled_from([doc, doc["metadata"], spec]))
        if breakage == "junk" and target:
            target[draw(st.sampled_from(sorted(target)))] = draw(junk)
        elif breakage == "unknown":
            target[draw(st.sampled_from(["replica", "imagePullPolicy", "x"]))] = draw(junk)
        elif breakage == "drop" and target:
            del target[draw(st.sampled_from(sorted(target)))]
    return doc


@FAST
@given(st.lists(services(), min_size=1, max_size=4))
def test_near_valid_services(documents: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(documents, sort_keys=False)
    assert_clean(load([make_file("services.yaml", text)]), {"services.yaml"})


@FAST
@given(services())
def test_both_validators_agree(document: dict[str, Any]) -> None:
    fast = manifest_schema.is_valid("Service", document)
    detailed = manifest_schema.problems("Service", document) == []
    assert fast == detailed


@FAST
@given(nested)
def test_both_validators_agree_on_anything(document: Any) -> None:
    assume(isinstance(document, dict))
    for kind in manifest_schema.KINDS:
        fast = manifest_schema.is_valid(kind, document)
        assert fast == (manifest_schema.problems(kind, document) == [])


# ---------------------------------------------------------------- digests


BASE: dict[str, Any] = {
    "apiVersion": "gitorch.dev/v1",
    "kind": "Service",
    "metadata": {"name": "web", "labels": {"tier": "frontend", "app": "shop"}},
    "spec": {
        "image": "shop/web:1.4.2",
        "replicas": 3,
        "ports": [{"name": "http", "containerPort": 8080}],
        "expose": {"port": 8000, "targetPort": "http"},
        "env": {"GREETING": "hello", "MODE": "fast"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "strategy": {
            "type": "Canary",
            "canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "60s"}}]},
        },
    },
}


def service_of(document: dict[str, Any]) -> Service:
    result = load([make_file("web.yaml", yaml.safe_dump(document, sort_keys=False))])
    assert result.state is not None, result.diagnostics
    return result.state.services["web"]


def reorder(value: Any, draw: st.DrawFn) -> Any:
    """The same mapping with keys in a drawn order, recursively."""
    if isinstance(value, dict):
        order = draw(st.permutations(list(value)))
        return {key: reorder(value[key], draw) for key in order}
    if isinstance(value, list):
        return [reorder(item, draw) for item in value]
    return value


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_digest_ignores_key_order(data: st.DataObject) -> None:
    shuffled = reorder(copy.deepcopy(BASE), data.draw)
    base, other = service_of(BASE), service_of(shuffled)
    assert other.digest == base.digest
    assert other.template_digest == base.template_digest


@settings(max_examples=40, deadline=None)
@given(
    cpu=st.sampled_from(["500m", "0.5", 0.5, "0.50"]),
    memory=st.sampled_from(["1Gi", "1024Mi", 1073741824, "1048576Ki"]),
    duration=st.sampled_from(["60s", "1m", 60, "60000ms", "0m60s"]),
)
def test_digest_ignores_quantity_spelling(cpu: Any, memory: Any, duration: Any) -> None:
    document = copy.deepcopy(BASE)
    document["spec"]["resources"]["requests"] = {"cpu": cpu, "memory": memory}
    document["spec"]["strategy"]["canary"]["steps"][1]["pause"]["duration"] = duration
    base, other = service_of(BASE), service_of(document)
    assert other.digest == base.digest
    assert other.template_digest == base.template_digest


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=10_000).filter(lambda n: n != 3))
def test_replicas_change_digest_but_not_template(replicas: int) -> None:
    document = copy.deepcopy(BASE)
    document["spec"]["replicas"] = replicas
    base, other = service_of(BASE), service_of(document)
    assert other.digest != base.digest
    assert other.template_digest == base.template_digest


@settings(max_examples=30, deadline=None)
@given(
    st.from_regex(r"\Ashop/web:[0-9]\.[0-9]{1,2}\.[0-9]\Z").filter(lambda i: i != "shop/web:1.4.2")
)
def test_image_changes_both_digests(image: str) -> None:
    document = copy.deepcopy(BASE)
    document["spec"]["image"] = image
    base, other = service_of(BASE), service_of(document)
    assert other.digest != base.digest
    assert other.template_digest != base.template_digest


def test_equivalent_spellings_have_one_canonical_form() -> None:
    document = copy.deepcopy(BASE)
    document["spec"]["resources"]["requests"] = {"cpu": 0.5, "memory": "1024Mi"}
    document["spec"]["strategy"]["canary"]["steps"][1]["pause"]["duration"] = "1m"
    canonical = service_of(document).canonical
    assert canonical["spec"]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert canonical["spec"]["strategy"]["canary"]["steps"][1] == {"pause": {"duration": "1m"}}

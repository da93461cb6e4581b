"""strategy.canary.stickySessions: schema, canonical form, typed model and digests."""

from __future__ import annotations

from typing import Any

import yaml
from manifest_helpers import load, make_file

from gitorch.manifests.model import Service


def _web(canary_extra: dict[str, Any]) -> str:
    document = {
        "apiVersion": "gitorch.dev/v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "image": "shop/web:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "expose": {"port": 8000},
            "strategy": {
                "type": "Canary",
                "canary": {"steps": [{"setWeight": 20}, {"pause": {}}], **canary_extra},
            },
        },
    }
    return yaml.safe_dump(document, sort_keys=False)


def _service(canary_extra: dict[str, Any]) -> Service:
    result = load([make_file("web.yaml", _web(canary_extra))])
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state.services["web"]


def test_off_by_default_and_left_out_of_the_canonical_form() -> None:
    # Left out when off: a Canary written before the field existed keeps its digest, so
    # upgrading gitorch shows no spurious change in its plan.
    web = _service({})
    assert web.strategy.canary is not None
    assert web.strategy.canary.sticky_sessions is False
    assert "stickySessions" not in web.canonical["spec"]["strategy"]["canary"]


def test_true_reaches_the_typed_model_and_the_canonical_form() -> None:
    web = _service({"stickySessions": True})
    assert web.strategy.canary is not None
    assert web.strategy.canary.sticky_sessions is True
    assert web.canonical["spec"]["strategy"]["canary"]["stickySessions"] is True


def test_explicit_false_means_the_same_as_omitted() -> None:
    assert _service({"stickySessions": False}).digest == _service({}).digest


def test_turning_it_on_changes_the_digest_but_rolls_no_replica() -> None:
    off, on = _service({}), _service({"stickySessions": True})
    assert on.digest != off.digest
    # Stickiness is a routing decision: the replicas run the same thing either way.
    assert on.template_digest == off.template_digest


def test_a_non_boolean_is_refused_with_its_position_and_field() -> None:
    text = _web({}).replace("canary:\n", "canary:\n      stickySessions: 'true'\n", 1)
    result = load([make_file("web.yaml", text)])
    assert result.state is None
    assert [str(d) for d in result.diagnostics] == [
        "web.yaml:15:23: spec.strategy.canary.stickySessions: must be a boolean, not a string"
    ]

"""The example shop's manifests (examples/repo, examples/repo-docker) agree with the
schemas, with each other, with the apps they start and with the images build.sh makes.

The full validator (cross-references, line numbers) is gitorch's own and tested there;
this only keeps the examples honest.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from shop_helpers import BUILD_SH, EXAMPLES, REPO_ROOT

REPOS = ("repo", "repo-docker")
SCHEMAS = REPO_ROOT / "schemas"


def load_docs(repo: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((EXAMPLES / repo).rglob("*.y*ml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def services(repo: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in load_docs(repo) if d["kind"] == "Service"}


@pytest.mark.parametrize("repo", REPOS)
def test_every_document_matches_its_schema(repo: str) -> None:
    schemas = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry: Registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    docs = load_docs(repo)
    assert docs, f"examples/{repo} holds no manifests"

    errors = []
    for doc in docs:
        schema = schemas[f"{doc['kind'].lower()}.schema.json"]
        validator = Draft202012Validator(schema, registry=registry)
        errors += [
            f"{doc['kind']}/{doc['metadata']['name']}: {e.message}"
            for e in validator.iter_errors(doc)
        ]

    assert errors == []


@pytest.mark.parametrize("repo", REPOS)
def test_the_shop_is_the_one_the_task_describes(repo: str) -> None:
    svc = services(repo)

    assert sorted(svc) == ["api", "counter", "web", "worker"]
    assert svc["web"]["replicas"] == 3
    assert svc["web"]["expose"]["port"] == 8000
    assert svc["web"]["dependsOn"] == ["api"]
    steps = svc["web"]["strategy"]["canary"]["steps"]
    assert {next(iter(step)) for step in steps} == {"setWeight", "pause", "analysis"}
    assert svc["api"]["replicas"] == 2
    assert svc["api"]["expose"]["port"] == 8001
    assert svc["api"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert svc["worker"]["replicas"] == 1
    assert "expose" not in svc["worker"]
    assert svc["worker"]["strategy"]["type"] == "Recreate"
    # web finds api through its stable endpoint: in containers as gitorch's discovery
    # gives it (dependsOn; a hard-coded address would be wrong inside a container).
    web_env = svc["web"].get("env", {})
    if repo == "repo-docker":
        assert "API_SERVICE_HOST" not in web_env and "API_SERVICE_PORT" not in web_env
    else:
        assert web_env["API_SERVICE_PORT"] == str(svc["api"]["expose"]["port"])
    # The stateful counter: one writer of its own ReadWriteOnce volume, served on 8002.
    assert svc["counter"]["replicas"] == 1
    assert svc["counter"]["expose"]["port"] == 8002
    assert [v["volume"] for v in svc["counter"]["volumes"]] == ["counter-data"]
    volumes = {d["metadata"]["name"]: d["spec"] for d in load_docs(repo) if d["kind"] == "Volume"}
    assert volumes["counter-data"]["accessMode"] == "ReadWriteOnce"


@pytest.mark.parametrize("repo", REPOS)
def test_references_inside_each_repo_resolve(repo: str) -> None:
    docs = load_docs(repo)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert len(names) == len(docs), "kind + name must be unique"

    for name, spec in services(repo).items():
        port_names = {p["name"] for p in spec.get("ports", [])}
        for dep in spec.get("dependsOn", []):
            assert ("Service", dep) in names, f"{name}: dependsOn {dep}"
        for vol in spec.get("volumes", []):
            assert ("Volume", vol["volume"]) in names, f"{name}: volume {vol['volume']}"
        probes = [spec.get("readinessProbe", {}), spec.get("livenessProbe", {})]
        refs = [spec["expose"]["targetPort"]] if "expose" in spec else []
        refs += [p["httpGet"]["port"] for p in probes if "httpGet" in p]
        assert all(r in port_names for r in refs), f"{name}: port refs {refs} vs {port_names}"


def test_process_repo_starts_the_python_apps_from_the_repo_root() -> None:
    for name, spec in services("repo").items():
        assert spec["command"] == ["python3", f"examples/apps/{name}/app.py"]
        assert (REPO_ROOT / spec["command"][1]).is_file()
        assert "image" not in spec
        assert spec["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_docker_repo_uses_images_that_build_sh_builds() -> None:
    built = set(re.findall(r"^build (\w+) (\w+)$", BUILD_SH.read_text(), re.MULTILINE))
    docs = load_docs("repo-docker")

    for name, spec in services("repo-docker").items():
        repo_name, tag = spec["image"].split(":")
        assert repo_name == f"gitorch-example/{name}"
        assert (name, tag) in built
        # busybox httpd runs CGI scripts only under /cgi-bin/.
        assert spec["readinessProbe"]["httpGet"]["path"] == "/cgi-bin/healthz"
    nodes = [d for d in docs if d["kind"] == "Node"]
    assert [n["spec"]["runtime"]["driver"] for n in nodes] == ["docker"]

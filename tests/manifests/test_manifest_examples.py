"""Golden model test: the example repo loads, with the defaults and canonical form we promise."""

from __future__ import annotations

import pytest
from manifest_helpers import REPO_ROOT, load, manifest_files

from gitorch.manifests import DesiredState

EXAMPLES = REPO_ROOT / "examples" / "repo"

# api.yaml's canonical form, written out by hand from the file and the documented defaults:
# every default present, quantities in one spelling, keys as the manifest spells them.
API_CANONICAL = {
    "apiVersion": "gitorch.dev/v1",
    "kind": "Service",
    "metadata": {"name": "api", "labels": {"app": "shop", "tier": "backend"}, "annotations": {}},
    "spec": {
        "command": ["python3", "examples/apps/api/app.py"],
        "args": [],
        "env": {"VERSION": "1"},
        "replicas": 2,
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "tcp"}],
        "expose": {"port": 8001, "targetPort": "http", "protocol": "http"},
        "resources": {
            "requests": {"cpu": "100m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"},
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 0,
            "periodSeconds": 2,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 5,
            "periodSeconds": 5,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dependsOn": [],
        "drift": "correct",
        "strategy": {
            "type": "RollingUpdate",
            "minReadySeconds": 0,
            "progressDeadlineSeconds": 120,
            "autoRollback": True,
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "placement": {
            "nodeSelector": {},
            "nodeAffinity": [],
            "serviceAntiAffinity": [],
            "serviceAffinity": [],
            "spread": [],
            "tolerations": [],
            "maxPerNode": 0,
            "priority": 0,
        },
        "volumes": [],
    },
}


@pytest.fixture(scope="module")
def state() -> DesiredState:
    result = load(manifest_files(EXAMPLES), revision="example")
    assert result.diagnostics == ()
    assert result.state is not None
    return result.state


def test_example_repo_loads(state: DesiredState) -> None:
    assert sorted(state.services) == ["api", "counter", "web", "worker"]
    assert state.nodes == {} and sorted(state.volumes) == ["counter-data"]
    assert state.revision == "example"
    assert [obj.name for obj in state.objects()] == [
        "counter-data",
        "api",
        "counter",
        "web",
        "worker",
    ]
    assert state.services["api"].origin.path == "api.yaml"


def test_api_canonical_form(state: DesiredState) -> None:
    assert state.services["api"].canonical == API_CANONICAL


def test_defaults_are_applied(state: DesiredState) -> None:
    worker = state.services["worker"]
    assert worker.image is None and worker.command[0] == "python3"
    assert worker.expose is None  # a port, but nothing routes to it
    assert worker.strategy.type == "Recreate"
    assert worker.strategy.progress_deadline_seconds == 600
    assert worker.strategy.auto_rollback is True
    assert worker.termination_grace_seconds == 30
    assert worker.drift == "correct"
    probe = worker.readiness_probe
    assert probe is not None
    assert (probe.period_seconds, probe.timeout_seconds, probe.failure_threshold) == (2, 1, 3)
    assert probe.handler == "httpGet" and worker.port_number(probe.http_port or "") == 8080
    assert worker.resources.requests.cpu_millis == 50
    assert worker.resources.limits.memory_bytes == 64 * 1024 * 1024
    assert worker.resources.qos_class == "Burstable"
    assert worker.autoscale is None and worker.placement.max_per_node == 0


def test_web_canary_and_dependency(state: DesiredState) -> None:
    web = state.services["web"]
    assert web.depends_on == ("api",)
    assert web.replicas == 3
    assert web.expose is not None and web.expose.port == 8000
    canary = web.strategy.canary
    assert canary is not None
    assert [step.describe() for step in canary.steps] == [
        "setWeight 20%",
        "pause 30s",
        "analysis",
        "setWeight 50%",
        "pause until `gitorch promote`",
        "setWeight 100%",
    ]
    analysis = canary.steps[2].analysis
    assert analysis is not None
    assert analysis.max_latency_p99_seconds == 0.5
    assert (analysis.count, analysis.failure_limit, analysis.min_requests) == (3, 0, 20)
    assert web.annotations["description"].startswith("Version page")
    env = {var.name: var.value for var in web.env}
    assert env["API_SERVICE_PORT"] == "8001" and not any(var.is_secret for var in web.env)


def test_loading_twice_gives_the_same_digests(state: DesiredState) -> None:
    again = load(manifest_files(EXAMPLES), revision="example").state
    assert again is not None
    assert again.digest == state.digest
    assert {n: s.digest for n, s in again.services.items()} == {
        n: s.digest for n, s in state.services.items()
    }
    # The four services differ, so do their digests.
    assert len({s.template_digest for s in state.services.values()}) == 4

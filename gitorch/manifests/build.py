"""From a schema-valid document to its canonical form and typed object.

The canonical form is the document with every default written out and every quantity in
one spelling (``0.5`` cpu -> ``"500m"``, ``1024Mi`` -> ``"1Gi"``, ``90s`` -> ``"1m30s"``),
keys in manifest spelling so a diff of two canonical forms reads like the YAML. Two
documents that mean the same thing have the same canonical form, hence the same digest.
Defaults are documented in ``docs/manifests.md``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from gitorch.manifests import model as m
from gitorch.manifests.quantities import (
    format_cpu,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)

DEFAULT_DOCKER_ENDPOINT = "unix:///var/run/docker.sock"

# Fields of a Service spec that define what one replica runs. A change to any of them
# needs new replicas; a change to any other field (replicas, strategy...) does not.
TEMPLATE_FIELDS = (
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "ports",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "volumes",
    "secrets",  # written only when a service has secret files: older digests stay the same
)


def digest_of(value: Any) -> str:
    """sha256 of the canonical JSON text of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def requests_of(canonical: Mapping[str, Any] | None) -> tuple[int, int]:
    """(cpu millicores, memory bytes) requested by a canonical Service (0 when absent)."""
    if not canonical:
        return 0, 0
    req = canonical.get("spec", {}).get("resources", {}).get("requests", {})
    return (
        parse_cpu(req["cpu"]) if "cpu" in req else 0,
        parse_memory(req["memory"]) if "memory" in req else 0,
    )


def priority_and_qos_of(canonical: Mapping[str, Any] | None) -> tuple[int, str]:
    """Placement priority and QoS class of a canonical Service (for preemption)."""
    if not canonical:
        return 0, ""
    spec = canonical.get("spec", {})
    resources = spec.get("resources", {})
    requests, limits = resources.get("requests", {}), resources.get("limits", {})
    guaranteed = (
        "cpu" in limits
        and "memory" in limits
        and all(requests.get(k, limits[k]) == limits[k] for k in ("cpu", "memory"))
    )
    qos = "Guaranteed" if guaranteed else "Burstable" if requests or limits else "BestEffort"
    return int(spec.get("placement", {}).get("priority", 0)), qos


def template_digest_of(canonical: Mapping[str, Any]) -> str:
    """Digest of what one replica of a canonical Service runs (see ``TEMPLATE_FIELDS``)."""
    spec = canonical["spec"]
    return digest_of({k: spec[k] for k in TEMPLATE_FIELDS if k in spec})


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


def _metadata(doc: Mapping[str, Any]) -> dict[str, Any]:
    meta = doc["metadata"]
    return {
        "name": meta["name"],
        "labels": dict(sorted((meta.get("labels") or {}).items())),
        "annotations": dict(sorted((meta.get("annotations") or {}).items())),
    }


def _envelope(kind: str, doc: Mapping[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": doc["apiVersion"], "kind": kind, "metadata": _metadata(doc), "spec": spec}


# ---------------------------------------------------------------- canonical forms


def _resource_list(raw: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw and "cpu" in raw:
        out["cpu"] = format_cpu(parse_cpu(raw["cpu"]))
    if raw and "memory" in raw:
        out["memory"] = format_memory(parse_memory(raw["memory"]))
    return out


def _probe(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not raw or not any(h in raw for h in ("httpGet", "tcpSocket", "exec")):
        return None  # an empty probe means "no probe"
    out: dict[str, Any] = {}
    if "httpGet" in raw:
        http = raw["httpGet"]
        out["httpGet"] = {"path": http.get("path", "/"), "port": http["port"]}
    elif "tcpSocket" in raw:
        out["tcpSocket"] = {"port": raw["tcpSocket"]["port"]}
    else:
        out["exec"] = {"command": list(raw["exec"]["command"])}
    out["initialDelaySeconds"] = raw.get("initialDelaySeconds", 0)
    out["periodSeconds"] = raw.get("periodSeconds", 10)
    out["timeoutSeconds"] = raw.get("timeoutSeconds", 1)
    out["successThreshold"] = raw.get("successThreshold", 1)
    out["failureThreshold"] = raw.get("failureThreshold", 3)
    return out


def _analysis(raw: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    out: dict[str, Any] = {
        "interval": format_duration(parse_duration(raw.get("interval", "10s"))),
        "count": raw.get("count", 3),
        "failureLimit": raw.get("failureLimit", 0),
        "minRequests": raw.get("minRequests", 20),
    }
    if "successRate" in raw:
        out["successRate"] = raw["successRate"]
    elif "prometheus" not in raw:
        out["successRate"] = 0.99  # built-in figures with nothing asked: judge errors
    if "maxLatencyP99" in raw:
        out["maxLatencyP99"] = format_duration(parse_duration(raw["maxLatencyP99"]))
    if "prometheus" in raw:
        out["prometheus"] = dict(raw["prometheus"])
    return out


def _strategy(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = raw or {}
    kind = raw.get("type", "RollingUpdate")
    out: dict[str, Any] = {
        "type": kind,
        "minReadySeconds": raw.get("minReadySeconds", 0),
        "progressDeadlineSeconds": raw.get("progressDeadlineSeconds", 600),
        "autoRollback": raw.get("autoRollback", True),
    }
    if kind == "RollingUpdate":
        rolling = raw.get("rollingUpdate") or {}
        out["rollingUpdate"] = {
            "maxSurge": rolling.get("maxSurge", "25%"),
            "maxUnavailable": rolling.get("maxUnavailable", 0),
        }
    elif kind == "BlueGreen":
        blue = raw.get("blueGreen") or {}
        out["blueGreen"] = {"scaleDownDelaySeconds": blue.get("scaleDownDelaySeconds", 30)}
        for key in ("previewPort", "autoPromotionSeconds"):
            if key in blue:
                out["blueGreen"][key] = blue[key]
        if "prePromotionAnalysis" in blue:
            out["blueGreen"]["prePromotionAnalysis"] = _analysis(blue["prePromotionAnalysis"])
    elif kind == "Canary":
        canary = raw.get("canary") or {}
        steps = []
        for step in canary.get("steps", []):
            if "setWeight" in step:
                steps.append({"setWeight": step["setWeight"]})
            elif "pause" in step:
                pause = step["pause"] or {}
                steps.append(
                    {"pause": {"duration": format_duration(parse_duration(pause["duration"]))}}
                    if "duration" in pause
                    else {"pause": {}}
                )
            else:
                steps.append({"analysis": _analysis(step["analysis"])})
        out["canary"] = {"steps": steps}
        if canary.get("stickySessions", False):
            # Written only when on: manifests that predate the field keep their digest,
            # so upgrading gitorch shows no change in their plan.
            out["canary"]["stickySessions"] = True
        if "analysis" in canary:
            out["canary"]["analysis"] = _analysis(canary["analysis"])
    elif kind == "ABTest":
        ab = raw.get("abTest") or {}
        out["abTest"] = {
            "match": [dict(rule) for rule in ab.get("match", [])],
            "duration": format_duration(parse_duration(ab.get("duration", "10m"))),
            "promote": ab.get("promote", True),
        }
        if "analysis" in ab:
            out["abTest"]["analysis"] = _analysis(ab["analysis"])
    return out


def _affinity_terms(raw: list[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {
            "service": term["service"],
            "topologyKey": term.get("topologyKey", "node"),
            "required": term.get("required", False),
            "weight": term.get("weight", 1),
        }
        for term in raw or []
    ]


def _placement(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = raw or {}
    return {
        "nodeSelector": dict(sorted((raw.get("nodeSelector") or {}).items())),
        "nodeAffinity": [
            {"weight": t["weight"], "match": dict(sorted(t["match"].items()))}
            for t in raw.get("nodeAffinity") or []
        ],
        "serviceAntiAffinity": _affinity_terms(raw.get("serviceAntiAffinity")),
        "serviceAffinity": _affinity_terms(raw.get("serviceAffinity")),
        "spread": [
            {
                "topologyKey": t["topologyKey"],
                "maxSkew": t.get("maxSkew", 1),
                "whenUnsatisfiable": t.get("whenUnsatisfiable", "DoNotSchedule"),
            }
            for t in raw.get("spread") or []
        ],
        "tolerations": [
            {
                "key": t.get("key"),
                "operator": t.get("operator", "Equal"),
                "value": t.get("value"),
                "effect": t.get("effect"),
                **(
                    {"tolerationSeconds": t["tolerationSeconds"]}
                    if "tolerationSeconds" in t
                    else {}
                ),
            }
            for t in raw.get("tolerations") or []
        ],
        "maxPerNode": raw.get("maxPerNode", 0),
        "priority": raw.get("priority", 0),
    }


def secret_ref_canonical(value: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical form of a secret reference (``digest``: only once resolved by
    gitorch.secrets; a manifest cannot carry one, the schema refuses it)."""
    if "secretFile" in value:
        out: dict[str, Any] = {"secretFile": value["secretFile"]}
    else:  # checks.py reports a reference missing either
        out = {"secret": value.get("secret"), "key": value.get("key")}
    if value.get("digest"):
        out["digest"] = value["digest"]
    return out


def secret_ref_of(value: Mapping[str, Any]) -> m.SecretRef:
    return m.SecretRef(
        file=value.get("secretFile"),
        secret=value.get("secret"),
        key=value.get("key"),
        digest=value.get("digest"),
    )


def _env_value(value: Any) -> Any:
    if isinstance(value, dict):
        return secret_ref_canonical(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def canonical_service(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc["spec"]
    ports = [
        {
            "name": p["name"],
            "containerPort": p["containerPort"],
            "protocol": p.get("protocol", "tcp"),
        }
        for p in raw.get("ports") or []
    ]
    spec: dict[str, Any] = {}
    if "image" in raw:
        spec["image"] = raw["image"]
    spec["command"] = list(raw.get("command") or [])
    spec["args"] = list(raw.get("args") or [])
    if "workingDir" in raw:
        spec["workingDir"] = raw["workingDir"]
    spec["env"] = {k: _env_value(v) for k, v in sorted((raw.get("env") or {}).items())}
    spec["replicas"] = raw.get("replicas", 1)
    spec["ports"] = ports
    if "expose" in raw:
        expose = raw["expose"]
        default_target: str | int = ports[0]["name"] if ports else expose["port"]
        spec["expose"] = {
            "port": expose["port"],
            "targetPort": expose.get("targetPort", default_target),
            "protocol": expose.get("protocol", "http"),
        }
        if "tls" in expose:
            spec["expose"]["tls"] = {
                "certFile": expose["tls"]["certFile"],
                "keyFile": expose["tls"]["keyFile"],
            }
    resources = raw.get("resources") or {}
    spec["resources"] = {
        "requests": _resource_list(resources.get("requests")),
        "limits": _resource_list(resources.get("limits")),
    }
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = _probe(raw.get(probe_name))
        if probe is not None:
            spec[probe_name] = probe
    spec["restartPolicy"] = raw.get("restartPolicy", "Always")
    spec["terminationGracePeriodSeconds"] = raw.get("terminationGracePeriodSeconds", 30)
    spec["dependsOn"] = sorted(raw.get("dependsOn") or [])
    spec["drift"] = raw.get("drift", "correct")
    spec["strategy"] = _strategy(raw.get("strategy"))
    spec["placement"] = _placement(raw.get("placement"))
    spec["volumes"] = [
        {
            "name": v["name"],
            "volume": v["volume"],
            "mountPath": v["mountPath"],
            "readOnly": v.get("readOnly", False),
        }
        for v in raw.get("volumes") or []
    ]
    if raw.get("secrets"):
        spec["secrets"] = [{"name": f["name"], **secret_ref_canonical(f)} for f in raw["secrets"]]
    if "autoscale" in raw:
        spec["autoscale"] = _autoscale(raw["autoscale"])
    return _envelope("Service", doc, spec)


def _autoscale(auto: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical ``autoscale``. ``selectPolicy``/``policies`` appear only when written
    (their defaults are Kubernetes' and live in the model), so the canonical form of a
    service written before they existed, and its digest, did not change."""
    behavior = auto.get("behavior") or {}

    def rules(raw: Mapping[str, Any] | None, window: int) -> dict[str, Any]:
        raw = raw or {}
        out: dict[str, Any] = {
            "stabilizationWindowSeconds": raw.get("stabilizationWindowSeconds", window)
        }
        if "selectPolicy" in raw:
            out["selectPolicy"] = raw["selectPolicy"]
        if "policies" in raw:
            out["policies"] = [dict(sorted(p.items())) for p in raw["policies"]]
        return out

    def metric(raw: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(raw)
        if "targetP99" in out:
            out["targetP99"] = format_duration(parse_duration(out["targetP99"]))
        return dict(sorted(out.items()))

    canonical: dict[str, Any] = {
        "minReplicas": auto.get("minReplicas", 1),
        "maxReplicas": auto["maxReplicas"],
        "metrics": [metric(m) for m in auto.get("metrics") or []],
        "behavior": {
            "scaleDown": rules(behavior.get("scaleDown"), 300),
            "scaleUp": rules(behavior.get("scaleUp"), 0),
        },
    }
    if "vertical" in auto:
        vertical = auto["vertical"] or {}
        canonical["vertical"] = {
            "mode": vertical.get("mode", "Recommend"),
            "minAllowed": _resource_list(vertical.get("minAllowed")),
            "maxAllowed": _resource_list(vertical.get("maxAllowed")),
        }
    return canonical


def canonical_node(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc["spec"]
    runtime = raw["runtime"]
    runtime_out: dict[str, Any] = {"driver": runtime["driver"]}
    if runtime["driver"] == "docker":
        runtime_out["endpoint"] = runtime.get("endpoint", DEFAULT_DOCKER_ENDPOINT)
        if "tls" in runtime:
            runtime_out["tls"] = {"verify": True, **runtime["tls"]}
        if "ssh" in runtime:
            runtime_out["ssh"] = dict(runtime["ssh"])
    spec: dict[str, Any] = {
        "runtime": runtime_out,
        "address": raw.get("address", "127.0.0.1"),
        "capacity": _resource_list(raw.get("capacity")),
        "taints": [
            {"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]}
            for t in raw.get("taints") or []
        ],
        "unschedulable": raw.get("unschedulable", False),
        "drain": raw.get("drain", False),
    }
    if "ingress" in raw:
        # Written only when given: its default (replicas) must not change the digest of
        # every Node applied before the field existed.
        spec["ingress"] = raw["ingress"]
    return _envelope("Node", doc, spec)


def canonical_volume(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc.get("spec") or {}
    spec: dict[str, Any] = {
        "accessMode": raw.get("accessMode", "ReadWriteOnce"),
        "reclaimPolicy": raw.get("reclaimPolicy", "Retain"),
    }
    if "size" in raw:
        spec["size"] = format_memory(parse_memory(raw["size"]))
    if "node" in raw:
        spec["node"] = raw["node"]
    if "hostPath" in raw:
        # One spelling of one directory: "/srv//data/" and "/srv/data" are the same.
        spec["hostPath"] = posixpath.normpath(raw["hostPath"])
    if "driver" in raw:
        spec["driver"] = raw["driver"]
    if raw.get("driverOpts"):
        spec["driverOpts"] = dict(sorted(raw["driverOpts"].items()))
    return _envelope("Volume", doc, spec)


# ---------------------------------------------------------------- typed objects


def _resources(raw: Mapping[str, str]) -> m.ResourceList:
    return m.ResourceList(
        cpu_millis=parse_cpu(raw["cpu"]) if "cpu" in raw else None,
        memory_bytes=parse_memory(raw["memory"]) if "memory" in raw else None,
    )


def _typed_probe(raw: Mapping[str, Any] | None) -> m.Probe | None:
    if raw is None:
        return None
    common = {
        "initial_delay_seconds": raw["initialDelaySeconds"],
        "period_seconds": raw["periodSeconds"],
        "timeout_seconds": raw["timeoutSeconds"],
        "success_threshold": raw["successThreshold"],
        "failure_threshold": raw["failureThreshold"],
    }
    if "httpGet" in raw:
        return m.Probe(http_path=raw["httpGet"]["path"], http_port=raw["httpGet"]["port"], **common)
    if "tcpSocket" in raw:
        return m.Probe(tcp_port=raw["tcpSocket"]["port"], **common)
    return m.Probe(exec_command=tuple(raw["exec"]["command"]), **common)


def _typed_analysis(raw: Mapping[str, Any] | None) -> m.Analysis | None:
    if raw is None:
        return None
    prom = raw.get("prometheus")
    return m.Analysis(
        interval_seconds=parse_duration(raw["interval"]),
        count=raw["count"],
        failure_limit=raw["failureLimit"],
        min_requests=raw["minRequests"],
        success_rate=raw.get("successRate"),
        max_latency_p99_seconds=parse_duration(raw["maxLatencyP99"])
        if "maxLatencyP99" in raw
        else None,
        prometheus=m.PrometheusQuery(prom["address"], prom["query"], prom["successCondition"])
        if prom
        else None,
    )


def _typed_strategy(raw: Mapping[str, Any]) -> m.Strategy:
    rolling = raw.get("rollingUpdate")
    blue = raw.get("blueGreen")
    canary = raw.get("canary")
    ab = raw.get("abTest")
    return m.Strategy(
        type=raw["type"],
        min_ready_seconds=raw["minReadySeconds"],
        progress_deadline_seconds=raw["progressDeadlineSeconds"],
        auto_rollback=raw["autoRollback"],
        rolling_update=m.RollingUpdate(rolling["maxSurge"], rolling["maxUnavailable"])
        if rolling
        else m.RollingUpdate(),
        blue_green=m.BlueGreen(
            preview_port=blue.get("previewPort"),
            auto_promotion_seconds=blue.get("autoPromotionSeconds"),
            scale_down_delay_seconds=blue["scaleDownDelaySeconds"],
            pre_promotion_analysis=_typed_analysis(blue.get("prePromotionAnalysis")),
        )
        if blue
        else None,
        canary=m.Canary(
            steps=tuple(_typed_step(step) for step in canary["steps"]),
            analysis=_typed_analysis(canary.get("analysis")),
            sticky_sessions=canary.get("stickySessions", False),
        )
        if canary
        else None,
        ab_test=m.ABTest(
            match=tuple(_typed_rule(rule) for rule in ab["match"]),
            duration_seconds=parse_duration(ab["duration"]),
            analysis=_typed_analysis(ab.get("analysis")),
            promote=ab["promote"],
        )
        if ab
        else None,
    )


def _typed_step(step: Mapping[str, Any]) -> m.CanaryStep:
    if "setWeight" in step:
        return m.CanaryStep(set_weight=step["setWeight"])
    if "pause" in step:
        duration = step["pause"].get("duration")
        return m.CanaryStep(
            is_pause=True, pause_seconds=parse_duration(duration) if duration is not None else None
        )
    return m.CanaryStep(analysis=_typed_analysis(step["analysis"]))


def _typed_rule(rule: Mapping[str, Any]) -> m.MatchRule:
    if "header" in rule:
        h = rule["header"]
        return m.MatchRule(header=h["name"], exact=h.get("exact"), regex=h.get("regex"))
    c = rule.get("cookie") or {}
    return m.MatchRule(cookie=c.get("name"), exact=c.get("exact"), regex=c.get("regex"))


def _typed_terms(raw: list[Mapping[str, Any]]) -> tuple[m.ServiceAffinityTerm, ...]:
    return tuple(
        m.ServiceAffinityTerm(t["service"], t["topologyKey"], t["required"], t["weight"])
        for t in raw
    )


def _typed_placement(raw: Mapping[str, Any]) -> m.Placement:
    return m.Placement(
        node_selector=_frozen(raw["nodeSelector"]),
        node_affinity=tuple(
            m.WeightedMatch(t["weight"], _frozen(t["match"])) for t in raw["nodeAffinity"]
        ),
        service_anti_affinity=_typed_terms(raw["serviceAntiAffinity"]),
        service_affinity=_typed_terms(raw["serviceAffinity"]),
        spread=tuple(
            m.SpreadConstraint(t["topologyKey"], t["maxSkew"], t["whenUnsatisfiable"])
            for t in raw["spread"]
        ),
        tolerations=tuple(
            m.Toleration(
                t["key"], t["operator"], t["value"], t["effect"], t.get("tolerationSeconds")
            )
            for t in raw["tolerations"]
        ),
        max_per_node=raw["maxPerNode"],
        priority=raw["priority"],
    )


def _typed_rules(raw: Mapping[str, Any], default: m.ScalingRules) -> m.ScalingRules:
    policies = tuple(
        m.ScalingPolicy(p["type"], p["value"], p["periodSeconds"]) for p in raw.get("policies", ())
    )
    return m.ScalingRules(
        stabilization_seconds=raw["stabilizationWindowSeconds"],
        select_policy=raw.get("selectPolicy", default.select_policy),
        policies=policies or default.policies,
    )


def _typed_autoscale(raw: Mapping[str, Any] | None) -> m.Autoscale | None:
    if raw is None:
        return None
    vertical = raw.get("vertical")
    return m.Autoscale(
        min_replicas=raw["minReplicas"],
        max_replicas=raw["maxReplicas"],
        metrics=tuple(
            m.AutoscaleMetric(
                type=metric["type"],
                target_average_utilization=metric.get("targetAverageUtilization"),
                target_average_value=metric.get("targetAverageValue"),
                query=metric.get("query"),
                address=metric.get("address"),
                target_value=metric.get("targetValue"),
                target_p99_seconds=parse_duration(metric["targetP99"])
                if "targetP99" in metric
                else None,
            )
            for metric in raw["metrics"]
        ),
        scale_down=_typed_rules(raw["behavior"]["scaleDown"], m.DEFAULT_SCALE_DOWN),
        scale_up=_typed_rules(raw["behavior"]["scaleUp"], m.DEFAULT_SCALE_UP),
        vertical=m.VerticalScaling(
            mode=vertical["mode"],
            min_allowed=_resources(vertical["minAllowed"]),
            max_allowed=_resources(vertical["maxAllowed"]),
        )
        if vertical is not None
        else None,
    )


def build_service(doc: Mapping[str, Any], origin: m.Origin) -> m.Service:
    canon = canonical_service(doc)
    spec = canon["spec"]
    meta = canon["metadata"]
    expose = spec.get("expose")
    resources = spec["resources"]
    return m.Service(
        name=meta["name"],
        labels=_frozen(meta["labels"]),
        annotations=_frozen(meta["annotations"]),
        image=spec.get("image"),
        command=tuple(spec["command"]),
        args=tuple(spec["args"]),
        working_dir=spec.get("workingDir"),
        env=tuple(
            m.EnvVar(name, secret_file=value.get("secretFile"), ref=secret_ref_of(value))
            if isinstance(value, dict)
            else m.EnvVar(name, value=value)
            for name, value in spec["env"].items()
        ),
        replicas=spec["replicas"],
        ports=tuple(m.Port(p["name"], p["containerPort"], p["protocol"]) for p in spec["ports"]),
        expose=m.Expose(
            expose["port"],
            expose["targetPort"],
            expose["protocol"],
            m.ExposeTls(expose["tls"]["certFile"], expose["tls"]["keyFile"])
            if "tls" in expose
            else None,
        )
        if expose
        else None,
        resources=m.Resources(_resources(resources["requests"]), _resources(resources["limits"])),
        readiness_probe=_typed_probe(spec.get("readinessProbe")),
        liveness_probe=_typed_probe(spec.get("livenessProbe")),
        startup_probe=_typed_probe(spec.get("startupProbe")),
        restart_policy=spec["restartPolicy"],
        termination_grace_seconds=spec["terminationGracePeriodSeconds"],
        depends_on=tuple(spec["dependsOn"]),
        drift=spec["drift"],
        strategy=_typed_strategy(spec["strategy"]),
        placement=_typed_placement(spec["placement"]),
        volumes=tuple(
            m.VolumeMount(v["name"], v["volume"], v["mountPath"], v["readOnly"])
            for v in spec["volumes"]
        ),
        autoscale=_typed_autoscale(spec.get("autoscale")),
        canonical=canon,
        digest=digest_of(canon),
        template_digest=template_digest_of(canon),
        origin=origin,
        secret_files=tuple(
            m.SecretFileMount(f["name"], secret_ref_of(f)) for f in spec.get("secrets") or []
        ),
    )


def build_node(doc: Mapping[str, Any], origin: m.Origin) -> m.Node:
    canon = canonical_node(doc)
    spec = canon["spec"]
    meta = canon["metadata"]
    runtime = spec["runtime"]
    tls = runtime.get("tls")
    ssh = runtime.get("ssh")
    return m.Node(
        name=meta["name"],
        labels=_frozen(meta["labels"]),
        annotations=_frozen(meta["annotations"]),
        driver=runtime["driver"],
        endpoint=runtime.get("endpoint"),
        tls=_tls_config(tls),
        address=spec["address"],
        capacity=_resources(spec["capacity"]),
        taints=tuple(m.Taint(t["key"], t["value"], t["effect"]) for t in spec["taints"]),
        unschedulable=spec["unschedulable"],
        drain=spec["drain"],
        canonical=canon,
        digest=digest_of(canon),
        origin=origin,
        ssh=m.SSHConfig(ssh.get("identityFile"), ssh.get("knownHostsFile")) if ssh else None,
        ingress=spec.get("ingress", m.INGRESS_REPLICAS),
    )


def build_volume(doc: Mapping[str, Any], origin: m.Origin) -> m.Volume:
    canon = canonical_volume(doc)
    spec = canon["spec"]
    meta = canon["metadata"]
    return m.Volume(
        name=meta["name"],
        labels=_frozen(meta["labels"]),
        annotations=_frozen(meta["annotations"]),
        size_bytes=parse_memory(spec["size"]) if "size" in spec else None,
        access_mode=spec["accessMode"],
        reclaim_policy=spec["reclaimPolicy"],
        node=spec.get("node"),
        canonical=canon,
        digest=digest_of(canon),
        origin=origin,
        host_path=spec.get("hostPath"),
        driver=spec.get("driver"),
        driver_opts=_frozen(spec.get("driverOpts") or {}),
    )


def canonical_secret(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc["spec"]
    data = {key: str(value).strip() + "\n" for key, value in sorted(raw["encryptedData"].items())}
    return _envelope("Secret", doc, {"encryptedData": data})


def build_secret(doc: Mapping[str, Any], origin: m.Origin) -> m.Secret:
    canon = canonical_secret(doc)
    meta = canon["metadata"]
    return m.Secret(
        name=meta["name"],
        labels=_frozen(meta["labels"]),
        annotations=_frozen(meta["annotations"]),
        encrypted=_frozen(canon["spec"]["encryptedData"]),
        canonical=canon,
        digest=digest_of(canon),
        origin=origin,
    )


#: NodePool defaults: the provider's time per call, how long replicas stay unschedulable
#: before a node is made, and the scale-down rule (Kubernetes' cluster autoscaler: 50%
#: requested for 10 minutes).
POOL_PROVIDER_TIMEOUT = "120s"
POOL_SCALE_UP_AFTER = "10s"
POOL_UTILIZATION_BELOW = 0.5
POOL_SCALE_DOWN_AFTER = "10m"


def canonical_node_pool(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc["spec"]
    template = raw["template"]
    provider = raw["provider"]
    up = raw.get("scaleUp") or {}
    down = raw.get("scaleDown") or {}
    spec: dict[str, Any] = {
        "minNodes": raw.get("minNodes", 0),
        "maxNodes": raw["maxNodes"],
        "template": {
            "labels": dict(template.get("labels") or {}),
            "capacity": _resource_list(template["capacity"]),
            "taints": [
                {"key": t["key"], "value": t.get("value", ""), "effect": t["effect"]}
                for t in template.get("taints") or []
            ],
            "runtime": _pool_runtime(template.get("runtime") or {}),
        },
        "provider": {
            "command": list(provider["command"]),
            "timeout": provider.get("timeout", POOL_PROVIDER_TIMEOUT),
        },
        "scaleUp": {"after": up.get("after", POOL_SCALE_UP_AFTER)},
        "scaleDown": {
            "utilizationBelow": down.get("utilizationBelow", POOL_UTILIZATION_BELOW),
            "after": down.get("after", POOL_SCALE_DOWN_AFTER),
        },
    }
    return _envelope("NodePool", doc, spec)


def _pool_runtime(runtime: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"driver": "docker"}
    if "tls" in runtime:
        out["tls"] = {"verify": True, **runtime["tls"]}
    return out


def _tls_config(tls: Mapping[str, Any] | None) -> m.TLSConfig | None:
    if not tls:
        return None
    return m.TLSConfig(
        tls.get("caCert"), tls.get("clientCert"), tls.get("clientKey"), tls["verify"]
    )


def build_node_pool(doc: Mapping[str, Any], origin: m.Origin) -> m.NodePool:
    canon = canonical_node_pool(doc)
    spec = canon["spec"]
    meta = canon["metadata"]
    template = spec["template"]
    return m.NodePool(
        name=meta["name"],
        labels=_frozen(meta["labels"]),
        annotations=_frozen(meta["annotations"]),
        min_nodes=spec["minNodes"],
        max_nodes=spec["maxNodes"],
        node_labels=_frozen(template["labels"]),
        capacity=_resources(template["capacity"]),
        taints=tuple(m.Taint(t["key"], t["value"], t["effect"]) for t in template["taints"]),
        command=tuple(spec["provider"]["command"]),
        timeout_seconds=parse_duration(spec["provider"]["timeout"]),
        scale_up_after=parse_duration(spec["scaleUp"]["after"]),
        utilization_below=float(spec["scaleDown"]["utilizationBelow"]),
        scale_down_after=parse_duration(spec["scaleDown"]["after"]),
        canonical=canon,
        digest=digest_of(canon),
        origin=origin,
        tls=_tls_config(template["runtime"].get("tls")),
    )


BUILDERS: dict[str, Callable[[Mapping[str, Any], m.Origin], m.ManifestObject]] = {
    "NodePool": build_node_pool,
    "Service": build_service,
    "Node": build_node,
    "Volume": build_volume,
    "Secret": build_secret,
}
